"""The tqdm decode head of MFuser (Mask2Former-style, text queries), in plain torch.

Official code: mmseg/models/decode_heads/tqdm_head.py (``tqdmHead``),
mmseg/models/plugins/tqdm_msdeformattn_pixel_decoder.py (``tqdmMSDeformAttnPixelDecoder``), built
from the mmcv 1.x transformer bricks (BaseTransformerLayer, MultiheadAttention, FFN, ConvModule,
SinePositionalEncoding, MultiScaleDeformableAttention) with the settings of
configs/mfuser/mfuser_clip_vit-l_1e-4_20k-*-512.py. Every official module is an nn.Module here under
the official attribute name, so state_dict keys match the checkpoint's ``decode_head.*`` keys and a
forward hook on a qualified name sees what the official module computes.

Data flow at the released config (B images, feats from the backbone FPN, 2048 channels each:
feats[0] 128x128, feats[1] 64x64, feats[2] 32x32, feats[3] 16x16; texts [B, 19, 768]):

  pixel_decoder
    input_convs[i] (1x1 conv + GN) on feats[3], feats[2], feats[1]  -> 16x16, 32x32, 64x64 (256 ch)
    + sine positional encoding + level_encoding[i]   (query position only)
    encoder: 6 x [deformable self-attn over the 5376 pixel tokens, LN,
                  cross-attn pixel tokens -> 19 projected text tokens, LN, FFN, LN],  post_norm LN
    lateral_convs[0] on feats[0] + bilinear-upsampled 64x64 memory -> output_convs[0]: 128x128
    mask_feature (1x1 conv)                                  -> mask features [B, 256, 128, 128]
  transformer decoder (queries = text_proj(texts), position = query_embed)
    prediction before layer 0 and after each of the 9 layers (forward_head): post_norm, cls_embed,
    mask_embed . mask features -> masks [B, 19, 128, 128], attention mask for the next layer
    layer i attends to level i % 3 (16x16, 32x32, 64x64) under that mask
  forward_test: softmax(cls)[..., :19] x sigmoid(masks) -> [B, 19, 128, 128]
    (the segmentor, not the head, resizes this to the crop size).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import losses as L
from .msdeform import MultiScaleDeformableAttention


# ---------------------------------------------------------------------------------------------
# mmcv bricks


class SinePositionalEncoding(nn.Module):
    """DETR sine positional encoding of an (unpadded) [B, h, w] mask -> [B, 2*num_feats, h, w].

    With normalize=True: y = row (1..h) / (h + eps) * scale, x = col (1..w) / (w + eps) * scale,
    t_k = temperature ** (2 * (k // 2) / num_feats); channels are
    [sin(y/t_0), cos(y/t_1), sin(y/t_2), ..., then the same for x]  (y first).
    """

    def __init__(self, num_feats, temperature=10000, normalize=False, scale=2 * math.pi, eps=1e-6, offset=0.0):
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.eps = eps
        self.offset = offset

    def forward(self, mask):
        # same float32 op sequence as upstream (cumsum of the not-mask, divide, scale)
        not_mask = 1 - mask.to(torch.int)
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale
        dim_t = torch.arange(self.num_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        B, H, W = mask.size()
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).view(B, H, W, -1)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).view(B, H, W, -1)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class ConvModule(nn.Module):
    """mmcv ConvModule conv -> GroupNorm (named ``gn``, eps 1e-5) -> optional ReLU (``activate``)."""

    def __init__(self, in_channels, out_channels, kernel_size, padding=0, bias=True, gn_groups=32, relu=False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=padding, bias=bias)
        self.gn = nn.GroupNorm(gn_groups, out_channels)
        self.activate = nn.ReLU(inplace=True) if relu else None
        # mmcv ConvModule initialises itself in its constructor: kaiming-normal conv (fan_out,
        # relu gain), zero bias, GN weight 1 / bias 0
        nn.init.kaiming_normal_(self.conv.weight, a=0, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)
        nn.init.ones_(self.gn.weight)
        nn.init.zeros_(self.gn.bias)

    def forward(self, x):
        x = self.gn(self.conv(x))
        return self.activate(x) if self.activate is not None else x


class FFN(nn.Module):
    """mmcv/mmseg FFN with num_fcs=2: identity + Linear(hidden->C)(ReLU(Linear(C->hidden)(x))).
    State-dict names: layers.0.0 (first Linear), layers.1 (second Linear). Dropouts are 0 here."""

    def __init__(self, embed_dims, feedforward_channels, ffn_drop=0.0):
        super().__init__()
        self.embed_dims = embed_dims
        self.feedforward_channels = feedforward_channels
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, feedforward_channels), nn.ReLU(inplace=True), nn.Dropout(ffn_drop)),
            nn.Linear(feedforward_channels, embed_dims),
            nn.Dropout(ffn_drop))

    def forward(self, x, identity=None):
        return (x if identity is None else identity) + self.layers(x)


class MultiheadAttention(nn.Module):
    """mmcv MultiheadAttention: torch nn.MultiheadAttention (``attn``: in_proj_weight/bias,
    out_proj) with positions added to query and key (not value) and the residual added inside:
    out = identity + attn(query + query_pos, key + key_pos, value). Sequence-first layout.
    A boolean attn_mask is True where attention is NOT allowed (torch convention)."""

    def __init__(self, embed_dims, num_heads, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, query, key=None, value=None, identity=None, query_pos=None, key_pos=None,
                attn_mask=None, key_padding_mask=None, **kwargs):
        if key is None:
            key = query
        if value is None:
            value = key
        if identity is None:
            identity = query
        if key_pos is None and query_pos is not None and query_pos.shape == key.shape:
            key_pos = query_pos
        if query_pos is not None:
            query = query + query_pos
        if key_pos is not None:
            key = key + key_pos
        out = self.attn(query=query, key=key, value=value, attn_mask=attn_mask,
                        key_padding_mask=key_padding_mask)[0]
        return identity + self.proj_drop(out)


class DetrTransformerDecoderLayer(nn.Module):
    """mmcv BaseTransformerLayer (post-norm): runs ``operation_order``; attentions are used in the
    order they appear in it (attentions[0] is the first of self_attn / cross_attn). self_attn gets
    key = value = query and key_pos = query_pos and the query_key_padding_mask; cross_attn gets the
    layer's key / value / key_pos / key_padding_mask. Extra kwargs go to every attention."""

    def __init__(self, attentions, feedforward_channels, operation_order, embed_dims):
        super().__init__()
        self.operation_order = tuple(operation_order)
        assert sum(op in ("self_attn", "cross_attn") for op in self.operation_order) == len(attentions)
        assert self.operation_order[0] != "norm"          # post-norm everywhere in MFuser
        self.attentions = nn.ModuleList(attentions)
        # trap: the layer-level feedforward_channels overrides ffn_cfgs['feedforward_channels'] in
        # mmcv 1.x (the pixel decoder's config says 1024 in ffn_cfgs, the weights are 2048 wide)
        self.ffns = nn.ModuleList([FFN(embed_dims, feedforward_channels)])
        self.norms = nn.ModuleList([nn.LayerNorm(embed_dims) for op in self.operation_order if op == "norm"])

    def forward(self, query, key=None, value=None, query_pos=None, key_pos=None, attn_masks=None,
                query_key_padding_mask=None, key_padding_mask=None, **kwargs):
        if attn_masks is None:
            attn_masks = [None] * len(self.attentions)
        norm_i = attn_i = 0
        for op in self.operation_order:
            if op == "self_attn":
                query = self.attentions[attn_i](query, query, query, None, query_pos=query_pos, key_pos=query_pos,
                                                attn_mask=attn_masks[attn_i], key_padding_mask=query_key_padding_mask,
                                                **kwargs)
                attn_i += 1
            elif op == "cross_attn":
                query = self.attentions[attn_i](query, key, value, None, query_pos=query_pos, key_pos=key_pos,
                                                attn_mask=attn_masks[attn_i], key_padding_mask=key_padding_mask,
                                                **kwargs)
                attn_i += 1
            elif op == "norm":
                query = self.norms[norm_i](query)
                norm_i += 1
            elif op == "ffn":
                query = self.ffns[0](query, None)
        return query


class DetrTransformerDecoder(nn.Module):
    """mmseg DetrTransformerDecoder: ``layers`` and a final LayerNorm ``post_norm``. With
    return_intermediate=True, forward returns post_norm of every layer's output, stacked."""

    def __init__(self, layers, embed_dims, return_intermediate=True):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.embed_dims = embed_dims
        self.return_intermediate = return_intermediate
        self.post_norm = nn.LayerNorm(embed_dims)

    def forward(self, query, *args, **kwargs):
        if not self.return_intermediate:
            for layer in self.layers:
                query = layer(query, *args, **kwargs)
            return self.post_norm(query)[None]
        intermediate = []
        for layer in self.layers:
            query = layer(query, *args, **kwargs)
            intermediate.append(self.post_norm(query))
        return torch.stack(intermediate)


def _caffe2_xavier_init(module):
    """mmcv caffe2_xavier_init: kaiming_uniform_(a=1, fan_in, leaky_relu), bias 0."""
    nn.init.kaiming_uniform_(module.weight, a=1, mode="fan_in", nonlinearity="leaky_relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------
# pixel decoder


class TqdmMSDeformAttnPixelDecoder(nn.Module):
    """Official ``tqdmMSDeformAttnPixelDecoder`` (registered on the head as ``pixel_decoder``).

    forward(feats, texts) -> (mask_feature [B, out, H0, W0], [memory at levels 3, 2, 1] (low to high
    resolution), each [B, feat, h, w]).
    """

    def __init__(self, in_channels, strides=(4, 8, 16, 32), feat_channels=256, out_channels=256,
                 text_in_dim=768, num_text_embeds=19, num_outs=3, gn_groups=32, num_heads=8, num_levels=3,
                 num_points=4, num_layers=6, feedforward_channels=2048, pos_feats=128):
        super().__init__()
        self.strides = list(strides)
        self.num_input_levels = len(in_channels)
        self.num_encoder_levels = num_levels
        # from low to high resolution: input_convs[i] projects feats[num_input_levels - 1 - i]
        self.input_convs = nn.ModuleList([
            ConvModule(in_channels[i], feat_channels, 1, bias=True, gn_groups=gn_groups)
            for i in range(self.num_input_levels - 1, self.num_input_levels - num_levels - 1, -1)])
        layers = []
        for _ in range(num_layers):
            # The official config overrides the plugin default order: deformable self-attention
            # first (attentions.0 = MultiScaleDeformableAttention, attentions.1 = MultiheadAttention).
            layers.append(DetrTransformerDecoderLayer(
                [MultiScaleDeformableAttention(feat_channels, num_heads, num_levels, num_points, dropout=0.0),
                 MultiheadAttention(feat_channels, num_heads)],
                feedforward_channels,
                ("self_attn", "norm", "cross_attn", "norm", "ffn", "norm"),
                feat_channels))
        # configured as a DetrTransformerDecoder with return_intermediate=True: its post_norm is
        # applied to every layer's output and the last one is the memory
        self.encoder = DetrTransformerDecoder(layers, feat_channels, return_intermediate=True)
        # (sic) the official attribute is spelled 'postional_encoding'; it has no parameters
        self.postional_encoding = SinePositionalEncoding(pos_feats, normalize=True)
        self.level_encoding = nn.Embedding(num_levels, feat_channels)
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for i in range(self.num_input_levels - num_levels - 1, -1, -1):
            self.lateral_convs.append(ConvModule(in_channels[i], feat_channels, 1, bias=False, gn_groups=gn_groups))
            self.output_convs.append(ConvModule(feat_channels, feat_channels, 3, padding=1, bias=False,
                                                gn_groups=gn_groups, relu=True))
        self.mask_feature = nn.Conv2d(feat_channels, out_channels, kernel_size=1)
        self.num_outs = num_outs
        self.text_proj = nn.Linear(text_in_dim, feat_channels)
        self.text_pos_embed = nn.Embedding(num_text_embeds, feat_channels)

    def init_weights(self):
        for conv_module in self.input_convs:
            nn.init.xavier_uniform_(conv_module.conv.weight, gain=1)
            nn.init.zeros_(conv_module.conv.bias)
        for i in range(self.num_input_levels - self.num_encoder_levels):
            _caffe2_xavier_init(self.lateral_convs[i].conv)
            _caffe2_xavier_init(self.output_convs[i].conv)
        _caffe2_xavier_init(self.mask_feature)
        nn.init.normal_(self.level_encoding.weight, mean=0, std=1)
        for p in self.encoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
        for layer in self.encoder.layers:
            for attn in layer.attentions:
                if isinstance(attn, MultiScaleDeformableAttention):
                    attn.init_weights()
        # text_proj, text_pos_embed and the norms keep torch's default initialisation (upstream too)

    def reference_points(self, h, w, level_idx, device):
        """Pixel centres ((x + 0.5) / w, (y + 0.5) / h), row-major, computed as upstream's
        MlvlPointGenerator (offset 0.5, in stride units) followed by division by (w, h) * stride."""
        stride = self.strides[level_idx]
        xs = (torch.arange(w, device=device).float() + 0.5) * stride
        ys = (torch.arange(h, device=device).float() + 0.5) * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)
        factor = torch.tensor([[w, h]], dtype=torch.float32, device=device) * stride
        return points / factor

    def forward(self, feats, texts):
        batch_size = feats[0].shape[0]
        inputs, padding_masks, level_pos, shapes, refs = [], [], [], [], []
        for i in range(self.num_encoder_levels):
            level_idx = self.num_input_levels - i - 1
            feat = feats[level_idx]
            projected = self.input_convs[i](feat)
            h, w = feat.shape[-2:]
            padding_mask = feat.new_zeros((batch_size, h, w), dtype=torch.bool)       # no padding
            pos = self.postional_encoding(padding_mask)
            pos = self.level_encoding.weight[i].view(1, -1, 1, 1) + pos
            refs.append(self.reference_points(h, w, level_idx, feat.device))
            inputs.append(projected.flatten(2).permute(2, 0, 1))        # [h*w, B, C]
            level_pos.append(pos.flatten(2).permute(2, 0, 1))
            padding_masks.append(padding_mask.flatten(1))
            shapes.append((h, w))
        padding_masks = torch.cat(padding_masks, dim=1)
        encoder_inputs = torch.cat(inputs, dim=0)
        level_pos = torch.cat(level_pos, dim=0)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=encoder_inputs.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        # the same reference point for every level (valid ratios are all 1)
        reference_points = torch.cat(refs, dim=0)[None, :, None].repeat(batch_size, 1, self.num_encoder_levels, 1)
        valid_radios = reference_points.new_ones((batch_size, self.num_encoder_levels, 2))

        text_feat = self.text_proj(texts).permute(1, 0, 2)                       # [19, B, C]
        text_pos = self.text_pos_embed.weight.unsqueeze(1).repeat((1, batch_size, 1))
        memory = self.encoder(encoder_inputs, text_feat, text_feat, query_pos=level_pos, key_pos=text_pos,
                              attn_masks=None, key_padding_mask=None, query_key_padding_mask=padding_masks,
                              spatial_shapes=spatial_shapes, reference_points=reference_points,
                              level_start_index=level_start_index, valid_radios=valid_radios)
        memory = memory[-1].permute(1, 2, 0)                                     # [B, C, sum h*w]

        outs = torch.split(memory, [h * w for h, w in shapes], dim=-1)
        outs = [x.reshape(batch_size, -1, h, w) for x, (h, w) in zip(outs, shapes)]
        for i in range(self.num_input_levels - self.num_encoder_levels - 1, -1, -1):
            cur = self.lateral_convs[i](feats[i])
            y = cur + F.interpolate(outs[-1], size=cur.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(self.output_convs[i](y))
        return self.mask_feature(outs[-1]), outs[:self.num_outs]


# ---------------------------------------------------------------------------------------------
# head


class TqdmHead(nn.Module):
    """Official ``tqdmHead`` (registered on the segmentor as ``decode_head``).

    forward(feats, texts, img_metas) -> (cls_pred_list, mask_pred_list): 1 + decoder_layers
    predictions, cls [B, Q, num_classes + 1] and mask logits [B, Q, H0, W0] (H0 = mask feature size).
    forward_train(x, texts, img_metas, gt_semantic_seg, train_cfg, gt_labels, gt_masks) -> loss dict.
    forward_test(inputs, texts, img_metas, test_cfg) -> [B, num_classes, H0, W0] class probabilities.
    """

    def __init__(self, in_channels=(2048, 2048, 2048, 2048), feat_channels=256, out_channels=256,
                 num_things_classes=8, num_stuff_classes=11, num_queries=19, num_transformer_feat_level=3,
                 num_heads=8, deform_num_points=4, encoder_layers=6, encoder_ffn=2048, decoder_layers=9,
                 decoder_ffn=2048, gn_groups=32, pos_feats=128, text_in_dim=768, strides=(4, 8, 16, 32),
                 class_weight=None, loss_cls_weight=2.0, loss_mask_weight=5.0, loss_dice_weight=5.0,
                 dice_eps=1.0, train_num_points=12544, oversample_ratio=3.0, importance_sample_ratio=0.75):
        super().__init__()
        self.num_things_classes = num_things_classes
        self.num_stuff_classes = num_stuff_classes
        self.num_classes = num_things_classes + num_stuff_classes
        self.num_queries = num_queries
        self.num_transformer_feat_level = num_transformer_feat_level
        self.num_heads = num_heads
        self.num_transformer_decoder_layers = decoder_layers

        self.pixel_decoder = TqdmMSDeformAttnPixelDecoder(
            list(in_channels), strides=strides, feat_channels=feat_channels, out_channels=out_channels,
            text_in_dim=text_in_dim, num_text_embeds=num_queries, num_outs=num_transformer_feat_level,
            gn_groups=gn_groups, num_heads=num_heads, num_levels=num_transformer_feat_level,
            num_points=deform_num_points, num_layers=encoder_layers, feedforward_channels=encoder_ffn,
            pos_feats=pos_feats)
        layers = [DetrTransformerDecoderLayer(
            [MultiheadAttention(feat_channels, num_heads), MultiheadAttention(feat_channels, num_heads)],
            decoder_ffn, ("cross_attn", "norm", "self_attn", "norm", "ffn", "norm"), feat_channels)
            for _ in range(decoder_layers)]
        self.transformer_decoder = DetrTransformerDecoder(layers, feat_channels, return_intermediate=True)
        self.decoder_embed_dims = feat_channels
        # decoder_embed_dims == feat_channels and enforce_decoder_input_project=False: identities
        self.decoder_input_projs = nn.ModuleList([nn.Identity() for _ in range(num_transformer_feat_level)])
        self.decoder_positional_encoding = SinePositionalEncoding(pos_feats, normalize=True)
        self.query_embed = nn.Embedding(num_queries, feat_channels)
        self.text_proj = nn.Sequential(nn.Linear(text_in_dim, feat_channels), nn.ReLU(inplace=True),
                                       nn.Linear(feat_channels, feat_channels))
        self.level_embed = nn.Embedding(num_transformer_feat_level, feat_channels)
        self.cls_embed = nn.Linear(feat_channels, self.num_classes + 1)
        self.mask_embed = nn.Sequential(
            nn.Linear(feat_channels, feat_channels), nn.ReLU(inplace=True),
            nn.Linear(feat_channels, feat_channels), nn.ReLU(inplace=True),
            nn.Linear(feat_channels, out_channels))

        # losses (no parameters). class weight: 1 per class, 0.1 for "no object"
        self.num_points = train_num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.class_weight = list(class_weight) if class_weight is not None else [1.0] * self.num_classes + [0.1]
        self.loss_cls = L.CrossEntropyLoss(use_sigmoid=False, class_weight=self.class_weight,
                                           loss_weight=loss_cls_weight)
        self.loss_mask = L.CrossEntropyLoss(use_sigmoid=True, loss_weight=loss_mask_weight)
        self.loss_dice = L.DiceLoss(naive_dice=True, eps=dice_eps, loss_weight=loss_dice_weight)
        # deterministic=True: every loss() call draws its points from a fresh generator seeded with
        # loss_seed (reproducible, independent of the global RNG); False: global torch RNG, as upstream
        self.deterministic = False
        self.loss_seed = 0

    @classmethod
    def from_config(cls, cfg):
        """Build from a model config (mfuser_ref.config.Config or the JSON loaded as a dict)."""
        dh = cfg["decode_head"]
        fpn_dim = 2 * cfg["vision"]["width"]                  # cat(DINOv2 tokens, CLIP tokens)
        num_classes = cfg["num_classes"]
        # the official split is 8 "things" + 11 "stuff"; only the sum matters for the head
        things = 8 if num_classes == 19 else 0
        return cls(in_channels=(fpn_dim,) * 4, feat_channels=dh["feat_channels"], out_channels=dh["feat_channels"],
                   num_things_classes=things, num_stuff_classes=num_classes - things, num_queries=num_classes,
                   num_transformer_feat_level=dh["num_levels"], num_heads=dh["num_heads"],
                   deform_num_points=dh["num_points"], encoder_layers=dh["encoder_layers"],
                   encoder_ffn=dh["encoder_ffn"], decoder_layers=dh["decoder_layers"], decoder_ffn=dh["decoder_ffn"],
                   gn_groups=dh["gn_groups"], pos_feats=dh["pos_feats"], text_in_dim=cfg["text"]["embed_dim"],
                   train_num_points=dh.get("train_num_points", 12544),
                   oversample_ratio=dh.get("oversample_ratio", 3.0),
                   importance_sample_ratio=dh.get("importance_sample_ratio", 0.75))

    def init_weights(self):
        """Official tqdmHead.init_weights: the pixel decoder's own init, xavier-normal on every
        matrix of the transformer decoder. query_embed, text_proj, level_embed, cls_embed, mask_embed
        keep torch's default initialisation (decoder_input_projs are identities).

        Note: the official train.py calls init_weights() on the backbone and the text encoder only,
        so official training starts from the constructor's state instead (torch defaults, mmcv
        ConvModule's kaiming init, MultiScaleDeformableAttention's own init, nn.MultiheadAttention's
        xavier in_proj), which is what a freshly constructed TqdmHead holds."""
        self.pixel_decoder.init_weights()
        for p in self.transformer_decoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)

    # ---- forward ------------------------------------------------------------------------------

    def forward_head(self, decoder_out, mask_feature, attn_mask_target_size, get_similarity=False):
        """decoder_out [Q, B, C] -> cls [B, Q, K+1], mask logits [B, Q, H0, W0], attention mask
        [B*heads, Q, h*w] (True = not attended) from the masks bilinearly resized to the next level."""
        decoder_out = self.transformer_decoder.post_norm(decoder_out).transpose(0, 1)
        cls_pred = self.cls_embed(decoder_out)
        mask_embed = self.mask_embed(decoder_out)
        mask_pred = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_feature)
        attn_mask = F.interpolate(mask_pred, attn_mask_target_size, mode="bilinear", align_corners=False)
        attn_mask = attn_mask.flatten(2).unsqueeze(1).repeat((1, self.num_heads, 1, 1)).flatten(0, 1)
        # masked where the predicted probability is below 0.5
        attn_mask = (attn_mask.sigmoid() < 0.5).detach()
        if not get_similarity:
            return cls_pred, mask_pred, attn_mask
        sim = torch.einsum("bqc,bchw->bqhw", F.normalize(mask_embed, dim=-1, p=2),
                           F.normalize(mask_feature, dim=1, p=2))
        return cls_pred, (sim + 1.0) / 2.0, attn_mask

    def forward(self, feats, texts, img_metas=None, return_mask_features=False, get_similarity=False):
        batch_size = len(img_metas) if img_metas is not None else feats[0].shape[0]
        mask_features, multi_scale_memorys = self.pixel_decoder(feats, texts)
        decoder_inputs, decoder_pos = [], []
        for i in range(self.num_transformer_feat_level):
            x = self.decoder_input_projs[i](multi_scale_memorys[i]).flatten(2).permute(2, 0, 1)
            decoder_inputs.append(x + self.level_embed.weight[i].view(1, 1, -1))
            mask = x.new_zeros((batch_size,) + multi_scale_memorys[i].shape[-2:], dtype=torch.bool)
            decoder_pos.append(self.decoder_positional_encoding(mask).flatten(2).permute(2, 0, 1))
        # the queries are the projected (context-enhanced) class-name embeddings, not learned
        # query features; query_embed is only their position
        query_feat = self.text_proj(texts).permute(1, 0, 2)                      # [Q, B, C]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat((1, batch_size, 1))

        cls_pred, mask_pred, attn_mask = self.forward_head(
            query_feat, mask_features, multi_scale_memorys[0].shape[-2:], get_similarity)
        cls_pred_list, mask_pred_list = [cls_pred], [mask_pred]
        for i in range(self.num_transformer_decoder_layers):
            level_idx = i % self.num_transformer_feat_level
            # a query whose mask is empty at this level attends everywhere instead of nowhere
            attn_mask[torch.where(attn_mask.sum(-1) == attn_mask.shape[-1])] = False
            layer = self.transformer_decoder.layers[i]
            query_feat = layer(query_feat, decoder_inputs[level_idx], decoder_inputs[level_idx],
                               query_pos=query_embed, key_pos=decoder_pos[level_idx],
                               attn_masks=[attn_mask, None], query_key_padding_mask=None, key_padding_mask=None)
            cls_pred, mask_pred, attn_mask = self.forward_head(
                query_feat, mask_features,
                multi_scale_memorys[(i + 1) % self.num_transformer_feat_level].shape[-2:], get_similarity)
            cls_pred_list.append(cls_pred)
            mask_pred_list.append(mask_pred)
        if return_mask_features:
            return cls_pred_list, mask_pred_list, mask_features
        return cls_pred_list, mask_pred_list

    def forward_test(self, inputs, texts, img_metas=None, test_cfg=None):
        """Semantic probabilities from the last prediction: sum_q softmax(cls_q)[c] * sigmoid(mask_q),
        the "no object" column dropped -> [B, num_classes, H0, W0] (not resized)."""
        all_cls_scores, all_mask_preds = self(inputs, texts, img_metas)
        cls_score = F.softmax(all_cls_scores[-1], dim=-1)[..., :-1]
        mask_pred = all_mask_preds[-1].sigmoid()
        return torch.einsum("bqc,bqhw->bchw", cls_score, mask_pred)

    def forward_inference(self, inputs, texts, img_metas=None, test_cfg=None):
        all_cls_scores, all_mask_preds, mask_features = self(inputs, texts, img_metas, return_mask_features=True)
        return all_mask_preds, mask_features

    # ---- loss ---------------------------------------------------------------------------------

    def loss_config(self):
        return L.MaskLossConfig(self.num_classes, self.num_queries, self.class_weight, self.loss_cls,
                                self.loss_mask, self.loss_dice, num_points=self.num_points,
                                oversample_ratio=self.oversample_ratio,
                                importance_sample_ratio=self.importance_sample_ratio,
                                assign_num_cls=self.num_classes)

    def _randomness(self, rand=None, generator=None):
        if rand is not None:
            return rand
        if generator is not None:
            return L.PointRandomness(generator=generator)
        if self.deterministic:
            return L.PointRandomness.seeded(self.loss_seed)
        return L.PointRandomness()

    def loss(self, all_cls_scores, all_mask_preds, gt_labels_list, gt_masks_list, img_metas=None,
             generator=None, rand=None):
        """Official loss dict over all predictions (see losses.py for the formulas). Random points
        come from ``rand`` (a losses.PointRandomness), else ``generator``, else a fresh generator
        seeded with self.loss_seed when self.deterministic, else the global torch RNG."""
        return L.all_layers_loss(all_cls_scores, all_mask_preds, gt_labels_list, gt_masks_list,
                                 self.loss_config(), self._randomness(rand, generator))

    def forward_train(self, x, texts, img_metas, gt_semantic_seg, train_cfg, gt_labels, gt_masks,
                      generator=None, rand=None):
        all_cls_scores, all_mask_preds = self(x, texts, img_metas)
        return self.loss(all_cls_scores, all_mask_preds, gt_labels, gt_masks, img_metas,
                         generator=generator, rand=rand)


# official class names
tqdmHead = TqdmHead
tqdmMSDeformAttnPixelDecoder = TqdmMSDeformAttnPixelDecoder


def build_decode_head(cfg):
    """The decode head for a model config (Config or dict)."""
    return TqdmHead.from_config(cfg)
