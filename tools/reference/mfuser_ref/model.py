"""Top-level MFuser-CLIP segmentor (official ``MFuser_CLIP``): backbone, text encoder with learned
prompt, context decoder, decode head; crop logits, slide inference, whole-image segmentation and
the training losses.

    cfg = load_config("tiny")
    model = MFuserCLIP(cfg).eval()
    logits = model(img)                        # [B, 19, H, W] crop logits (encode_decode)
    losses = model.train()(img, gt_semantic_seg=seg)   # loss dict, see forward_train
    labels = model.segment(rgb_uint8_hw3)      # [H, W] trainIds (test-time pipeline)

``deterministic=True`` keeps training mode (BatchNorm batch statistics, training-only code paths)
but switches off every random mask (CLIP drop path, MVFuser / context-decoder dropouts).
"""

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import CLIPVisionTransformer, DropPath
from .config import CLIP_MEAN, CLIP_STD, IGNORE_INDEX, TEST_SCALES, cityscapes_token_ids
from .head import build_decode_head
from .losses import semantic_to_targets
from .text import CLIPTextContextEncoder, ContextDecoder


class IdentityHead(nn.Module):
    """Official auxiliary ``IdentityHead``: passes the score map through; its loss is mmseg's
    decode-head loss: bilinear resize (align_corners=False) to the label size, cross-entropy with
    ignore_index 255 averaged over *all* pixels (mmseg's avg_non_ignore=False: ignored pixels count
    in the denominator), plus the top-1 pixel accuracy in percent over all pixels."""

    def __init__(self, ignore_index=IGNORE_INDEX, loss_weight=1.0):
        super().__init__()
        self.ignore_index = ignore_index
        self.loss_weight = loss_weight

    def forward(self, inputs):
        return inputs

    def losses(self, seg_logit, seg_label):
        seg_logit = F.interpolate(seg_logit, size=seg_label.shape[2:], mode="bilinear", align_corners=False)
        seg_label = seg_label.squeeze(1)
        ce = F.cross_entropy(seg_logit, seg_label, reduction="none", ignore_index=self.ignore_index)
        pred = seg_logit.argmax(dim=1)
        acc = (pred == seg_label).float().sum() * (100.0 / seg_label.numel())
        return OrderedDict([("loss_seg", self.loss_weight * ce.mean()), ("acc_seg", acc)])

    def forward_train(self, inputs, img_metas, gt_semantic_seg, train_cfg=None):
        return self.losses(self.forward(inputs), gt_semantic_seg)


def semantic_to_masks(gt_semantic_seg, ignore_index=IGNORE_INDEX):
    """The ``ToMask`` transform over a batch [B, 1, H, W] or [B, H, W]: lists of gt_labels and
    gt_masks (see losses.semantic_to_targets)."""
    pairs = [semantic_to_targets(seg, ignore_index) for seg in gt_semantic_seg]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def total_loss(losses):
    """mmseg's ``_parse_losses``: the sum of the (mean of the) entries whose name contains 'loss'."""
    total = 0.0
    for name, value in losses.items():
        if "loss" in name:
            total = total + (sum(v.mean() for v in value) if isinstance(value, (list, tuple)) else value.mean())
    return total


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def slide_windows(h_img, w_img, crop, stride):
    """mmseg's slide-mode crop boxes (y1, y2, x1, x2): a grid of ceil((size - crop) / stride) + 1
    windows per axis, the last ones shifted back to end at the border; a crop larger than the
    image is clipped to it (no padding)."""
    h_crop, w_crop = _pair(crop)
    h_stride, w_stride = _pair(stride)
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    boxes = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            boxes.append((y1, y2, x1, x2))
    return boxes


def slide_inference(encode_decode, img, crop, stride, num_classes):
    """mmseg slide mode: ``encode_decode`` (crop [B, 3, h, w] -> logits [B, K, h, w]) on every
    window of ``slide_windows``; the logits are summed into place and divided by the per-pixel
    window count -> [B, K, H, W] at the input size (the caller resizes / softmaxes / argmaxes)."""
    B, _, H, W = img.shape
    preds = img.new_zeros((B, num_classes, H, W))
    count = img.new_zeros((B, 1, H, W))
    for y1, y2, x1, x2 in slide_windows(H, W, crop, stride):
        preds += F.pad(encode_decode(img[:, :, y1:y2, x1:x2]), (x1, W - x2, y1, H - y2))
        count[:, :, y1:y2, x1:x2] += 1
    assert (count == 0).sum() == 0
    return preds / count


def rescale_size(w, h, scale):
    """mmcv's keep-ratio target size (``imrescale`` with a (long, short) edge tuple)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)


class MFuserCLIP(nn.Module):
    """Official ``MFuser_CLIP`` segmentor with the released configuration's components."""

    def __init__(self, cfg, deterministic=False, texts=None):
        super().__init__()
        self.cfg = cfg
        self.tau = cfg.tau
        self.num_classes = cfg.num_classes
        self.context_length = cfg.text.context_length

        # registration order as upstream: backbone, text_encoder, context_decoder, decode_head,
        # identity_head, then contexts and gamma
        self.backbone = CLIPVisionTransformer.from_config(cfg)
        self.text_encoder = CLIPTextContextEncoder.from_config(cfg)
        self.context_decoder = ContextDecoder.from_config(cfg)
        self.decode_head = build_decode_head(cfg)
        self.identity_head = IdentityHead()

        if texts is None:
            texts = cityscapes_token_ids()
        texts = torch.as_tensor(texts, dtype=torch.int64)
        assert texts.shape == (self.num_classes, self.context_length), texts.shape
        # class-name token ids: a plain tensor upstream, so not part of the checkpoint
        self.register_buffer("texts", texts, persistent=False)
        prompt_num = self.text_encoder.context_length - self.context_length
        self.contexts = nn.Parameter(torch.randn(1, prompt_num, cfg.text.width))
        self.gamma = nn.Parameter(torch.ones(cfg.text.embed_dim) * 1e-4)
        nn.init.trunc_normal_(self.contexts)
        # Upstream: gamma is created as 1e-4 * ones and then re-initialised by
        # nn.init.trunc_normal_ (mean 0, std 1, [-2, 2]): the 1e-4 never survives.
        nn.init.trunc_normal_(self.gamma)

        self.register_buffer("img_mean", torch.tensor(CLIP_MEAN, dtype=torch.float64).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("img_std", torch.tensor(CLIP_STD, dtype=torch.float64).view(1, 3, 1, 1),
                             persistent=False)
        self.set_trainable()
        self.set_deterministic(deterministic)

    # ---------------------------------------------------------------------------------------
    # set-up

    def set_trainable(self):
        """Upstream's freezing: the whole text encoder, and every backbone parameter whose name
        does not contain 'adapter' or 'fpn' (CLIP visual and DINOv2 towers)."""
        for p in self.text_encoder.parameters():
            p.requires_grad = False
        for name, p in self.backbone.named_parameters():
            p.requires_grad = any(key in name for key in ("adapter", "fpn", "adapter_proj"))

    @torch.no_grad()
    def init_weights(self):
        """Fresh weights everywhere: random stand-ins for the frozen pretrained towers and the
        upstream initialisation of the trainable parts. The decode head keeps what its
        constructor gave it: upstream's train.py calls init_weights() on the backbone and the text
        encoder only (both load pretrained weights there), never on the segmentor or the head."""
        self.backbone.init_weights()
        self.text_encoder.init_weights()
        self.context_decoder.init_weights()
        nn.init.trunc_normal_(self.contexts)
        nn.init.trunc_normal_(self.gamma)
        return self

    def train(self, mode=True):
        super().train(mode)
        if mode and self.deterministic:
            for m in self.modules():
                if isinstance(m, (nn.Dropout, nn.Dropout2d, DropPath)):
                    m.eval()
        return self

    def set_deterministic(self, flag=True):
        """Switch the random masks of training mode off (True) or back on (False). True also makes
        the head's loss draw its uncertainty points from a generator seeded afresh at every call."""
        self.deterministic = flag
        self.decode_head.deterministic = flag
        return self.train(self.training)

    # ---------------------------------------------------------------------------------------
    # forward pieces (official names)

    def extract_feat(self, img):
        return self.backbone(img)

    def after_extract_feat(self, x):
        """Text embeddings refined by the image; score map between visual and text embeddings.
        Returns (multi-level features, score map [B, K, h, w], text embeddings [B, K, E], global)."""
        x_orig = list(x[:-1])
        global_feat, visual_embeddings = x[-1]
        b_size = global_feat.shape[0]
        visual_context = torch.cat([global_feat, visual_embeddings.flatten(-2).permute(0, 2, 1)], dim=1)
        text_embeddings = self.text_encoder(self.texts, context=self.contexts).expand(b_size, -1, -1)
        text_diff = self.context_decoder(text_embeddings, visual_context)
        text_embeddings = text_embeddings + self.gamma * text_diff
        ret_text_emb = text_embeddings
        visual_embeddings = F.normalize(visual_embeddings, dim=1, p=2)
        text_embeddings = F.normalize(text_embeddings, dim=-1, p=2)
        score_map = torch.einsum("bchw,bkc->bkhw", visual_embeddings, text_embeddings)
        return x_orig, score_map, ret_text_emb, global_feat

    @staticmethod
    def default_img_metas(img):
        B, _, H, W = img.shape
        meta = {"ori_shape": (H, W, 3), "img_shape": (H, W, 3), "pad_shape": (H, W, 3), "flip": False}
        return [dict(meta) for _ in range(B)]

    def encode_decode(self, img, img_metas=None):
        """Crop logits [B, K, H, W]: the head's semantic output resized (bilinear) to the input."""
        if img_metas is None:
            img_metas = self.default_img_metas(img)
        x = self.extract_feat(img)
        x_orig, _, text_emb, _ = self.after_extract_feat(x)
        out = self.decode_head.forward_test(x_orig, text_emb, img_metas, {})
        return F.interpolate(out, size=img.shape[-2:], mode="bilinear", align_corners=False)

    def forward_train(self, img, gt_semantic_seg, gt_labels=None, gt_masks=None, img_metas=None):
        """Loss dict as upstream: 'scr_map.loss_seg' / 'scr_map.acc_seg' (score-map auxiliary CE on
        score_map / tau) and the head's losses prefixed 'decode.'. gt_semantic_seg: [B, 1, H, W]
        int64 trainIds (255 = ignore); gt_labels / gt_masks default to the ToMask transform of it."""
        if gt_semantic_seg.dim() == 3:
            gt_semantic_seg = gt_semantic_seg[:, None]
        gt_semantic_seg = gt_semantic_seg.long()
        if gt_labels is None or gt_masks is None:
            gt_labels, gt_masks = semantic_to_masks(gt_semantic_seg)
        if img_metas is None:
            img_metas = self.default_img_metas(img)
        x = self.extract_feat(img)
        x_orig, score_map, text_emb, _ = self.after_extract_feat(x)
        losses = OrderedDict()
        for k, v in self.identity_head.forward_train(score_map / self.tau, img_metas, gt_semantic_seg).items():
            losses["scr_map." + k] = v
        loss_decode = self.decode_head.forward_train(
            x_orig, text_emb, img_metas, gt_semantic_seg, {}, gt_labels, gt_masks)
        for k, v in loss_decode.items():
            losses["decode." + k] = v
        return losses

    def forward(self, img, gt_semantic_seg=None, gt_labels=None, gt_masks=None, img_metas=None):
        """Without labels: crop logits (``encode_decode``). With labels: the loss dict."""
        if gt_semantic_seg is None:
            return self.encode_decode(img, img_metas)
        return self.forward_train(img, gt_semantic_seg, gt_labels, gt_masks, img_metas)

    # ---------------------------------------------------------------------------------------
    # test-time pipeline

    @torch.no_grad()
    def slide_inference(self, img, crop=None, stride=None, num_classes=None):
        """mmseg slide mode over this model's crop logits (see the module-level function);
        crop / stride default to the config's."""
        crop = self.cfg.slide.crop if crop is None else crop
        stride = self.cfg.slide.stride if stride is None else stride
        num_classes = self.num_classes if num_classes is None else num_classes
        # upstream passes the whole image's metas to every crop (the head does not read them)
        metas = self.default_img_metas(img)
        return slide_inference(lambda crop_img: self.encode_decode(crop_img, metas), img, crop, stride, num_classes)

    def normalize(self, rgb):
        """mmcv ``imnormalize`` (to_rgb already done): (img - mean) * (1 / std) in float64, then
        float32. rgb: [B, 3, H, W] values 0..255."""
        return ((rgb.double() - self.img_mean) * (1.0 / self.img_std)).float()

    @torch.no_grad()
    def segment(self, image, dataset="cityscapes", scale=None):
        """Whole-image prediction, as the official test pipeline: keep-ratio resize to the dataset
        scale, CLIP normalisation, slide inference, bilinear resize of the logits back to the
        original size, softmax, argmax. image: RGB uint8 [H, W, 3] (numpy or tensor).
        Returns int64 trainIds [H, W].

        The resize is torch bilinear (half-pixel centres, no antialias) rounded to uint8; mmcv
        uses cv2's fixed-point INTER_LINEAR, which can differ by 1 grey level. Both are the
        identity for Cityscapes' 2048x1024 at scale (2048, 1024)."""
        img = torch.as_tensor(image)
        assert img.dim() == 3 and img.shape[-1] == 3, "expected an RGB image [H, W, 3]"
        H, W = img.shape[:2]
        img = img.permute(2, 0, 1)[None].float()
        new_w, new_h = rescale_size(W, H, scale or TEST_SCALES[dataset])
        if (new_h, new_w) != (H, W):
            img = F.interpolate(img, size=(new_h, new_w), mode="bilinear", align_corners=False)
            img = img.round().clamp(0, 255)
        img = self.normalize(img).to(self.texts.device)
        logits = self.slide_inference(img)
        logits = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
        return F.softmax(logits, dim=1).argmax(dim=1)[0]
