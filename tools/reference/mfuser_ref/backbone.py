"""MFuser-CLIP backbone: CLIP visual ViT and DINOv2 ViT run side by side, fused after every block by
an MVFuser adapter, with a 4-level FPN on the fused features and CLIP-space embeddings at the end.

Module and parameter names mirror the official ``CLIPVisionTransformer`` (and the DINOv2 / CLIP
modules it holds), so that ``state_dict()`` keys equal an official checkpoint's.
"""

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from .mamba import MVFuser


# --------------------------------------------------------------------------------------------
# CLIP transformer pieces (shared with the text encoder)
# --------------------------------------------------------------------------------------------

class LayerNorm(nn.LayerNorm):
    """CLIP's LayerNorm: computed in at least float32 whatever the input dtype (eps 1e-5); float64 stays
    float64 so the golden generator can run the whole model in double precision."""

    def forward(self, x):
        return super().forward(x.to(torch.promote_types(x.dtype, torch.float32))).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class DropPath(nn.Module):
    """Stochastic depth: zero the whole residual branch of a random subset of dim-0 slices and
    rescale the kept ones by 1 / keep_prob (timm's drop_path, scale_by_keep=True).

    Note: in the CLIP blocks the layout is sequence-first (L, B, C), so dim 0 is the *token*
    dimension: upstream drops per token, not per sample. Reproduced as is.
    """

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        if keep_prob > 0.0:
            mask.div_(keep_prob)
        return x * mask

    def extra_repr(self):
        return "p={}".format(self.drop_prob)


class ResidualAttentionBlock(nn.Module):
    """CLIP block, sequence-first [L, B, C]: x += attn(ln_1 x); x += mlp(ln_2 x) (QuickGELU)."""

    def __init__(self, d_model, n_head, attn_mask=None, drop_path=0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, d_model * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(d_model * 4, d_model)),
        ]))
        self.ln_2 = LayerNorm(d_model)
        self.attn_mask = attn_mask      # additive mask, a plain attribute (not in the state dict)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def attention(self, x):
        mask = self.attn_mask.to(dtype=x.dtype, device=x.device) if self.attn_mask is not None else None
        return self.attn(x, x, x, need_weights=False, attn_mask=mask)[0]

    def forward(self, x):
        x = x + self.drop_path(self.attention(self.ln_1(x)))
        x = x + self.drop_path(self.mlp(self.ln_2(x)))
        return x


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, attn_mask=None, drop_path_rate=0.0):
        super().__init__()
        self.width = width
        self.layers = layers
        dpr = [r.item() for r in torch.linspace(0, drop_path_rate, layers)]   # stochastic depth decay
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask, dpr[i])
                                         for i in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


def clip_transformer_init_(transformer):
    """OpenAI CLIP's initialisation of a Transformer (used where upstream loads pretrained weights)."""
    width, layers = transformer.width, transformer.layers
    proj_std = (width ** -0.5) * ((2 * layers) ** -0.5)
    attn_std = width ** -0.5
    fc_std = (2 * width) ** -0.5
    for block in transformer.resblocks:
        nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        nn.init.zeros_(block.attn.in_proj_bias)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.zeros_(block.attn.out_proj.bias)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.zeros_(block.mlp.c_fc.bias)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.zeros_(block.mlp.c_proj.bias)


# --------------------------------------------------------------------------------------------
# DINOv2 ViT (the MFuser copy: patch 16, LayerScale, eps 1e-6, exact GELU, no drop path)
# --------------------------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    def __init__(self, img_size, patch_size, in_chans, embed_dim):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.patches_resolution = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.patches_resolution[0] * self.patches_resolution[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)                 # [B, HW, C]


# Benchmarks set this to run DINOv2's attention through F.scaled_dot_product_attention (PyTorch's fastest
# kernel, what upstream gets from xformers); the tests keep the explicit softmax, the reference semantics.
FAST_ATTENTION = False


class DinoAttention(nn.Module):
    """DINOv2 attention (fused qkv with bias; q is scaled before q @ k^T)."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        if FAST_ATTENTION and hasattr(F, "scaled_dot_product_attention"):  # torch >= 2.1 (scale=)
            x = F.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(1, 2).reshape(B, N, C)
            return self.proj(x)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class LayerScale(nn.Module):
    def __init__(self, dim, init_values=1e-5):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DinoBlock(nn.Module):
    """Pre-LN block: x += ls1(attn(norm1 x)); x += ls2(mlp(norm2 x)). Upstream builds it with
    drop_path 0, so training mode changes nothing here."""

    def __init__(self, dim, num_heads, mlp_ratio=4, init_values=1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = DinoAttention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT as used by MFuser: only the token preparation and the blocks are run;
    ``norm`` (and ``mask_token``) exist in the checkpoint but are never applied."""

    def __init__(self, img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio=4, init_values=1e-5):
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList([DinoBlock(embed_dim, num_heads, mlp_ratio, init_values)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))

    def interpolate_pos_encoding(self, x, h, w):
        """Upstream's rule, argument names as there (h, w = input height, width): the stored
        table is used as is when the token count matches and h == w; otherwise the grid part is
        resized bicubically with scale_factor ((h//p + 0.1)/sqrt(N), (w//p + 0.1)/sqrt(N))."""
        npatch = x.shape[1] - 1
        N = self.pos_embed.shape[1] - 1
        if npatch == N and h == w:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        side = int(N ** 0.5)
        h0 = h // self.patch_size + 0.1     # +0.1 avoids floor() rounding down (upstream's trick)
        w0 = w // self.patch_size + 0.1
        patch_pos = F.interpolate(
            pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2),
            scale_factor=(h0 / N ** 0.5, w0 / N ** 0.5), mode="bicubic")
        assert int(h0) == patch_pos.shape[-2] and int(w0) == patch_pos.shape[-1]
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, x.shape[-1])
        return torch.cat((pos_embed[:, :1], patch_pos), dim=1).to(x.dtype)

    def prepare_tokens_with_masks(self, x):
        _, _, h, w = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return x + self.interpolate_pos_encoding(x, h, w)


# --------------------------------------------------------------------------------------------
# The fused backbone
# --------------------------------------------------------------------------------------------

class CLIPVisionTransformer(nn.Module):
    """Official ``CLIPVisionTransformer`` of MFuser-CLIP (with DINOv2, adapters, FPN, embeddings).

    forward(img [B, 3, H, W], CLIP-normalised) -> (f1, f2, f3, f4, [global [B, 1, E], visual [B, E, h, w]])
    with f1..f4 the fused features at 4x, 2x, 1x, 1/2x the patch grid (channels = 2 x width).
    """

    def __init__(self, input_resolution=224, patch_size=32, width=768, layers=12, heads=12,
                 output_dim=512, drop_path_rate=0.0, out_indices=(3, 5, 7, 11), get_embeddings=True,
                 mlp_ratio=4, d_state=16, d_conv=3, adapter_proj_drop=0.1):
        super().__init__()
        self.embed_dim = width
        self.output_dim = output_dim
        self.patch_size = patch_size
        self.input_resolution = (input_resolution, input_resolution)
        self.spatial_size = (input_resolution // patch_size, input_resolution // patch_size)
        self.out_indices = list(out_indices)
        self.get_embeddings = get_embeddings

        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.positional_embedding = nn.Parameter(
            scale * torch.randn(self.spatial_size[0] * self.spatial_size[1] + 1, width))
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, drop_path_rate=drop_path_rate)
        if get_embeddings:
            self.ln_post = LayerNorm(width)
            self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

        # DINOv2 has the same width/depth/heads as the CLIP tower (ViT-L for both upstream)
        dino_dim = width
        self.fpn_dim = width + dino_dim
        # upstream: SyncBatchNorm (one process here: plain BatchNorm2d, same state dict entries)
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(self.fpn_dim, self.fpn_dim, kernel_size=2, stride=2),
            nn.BatchNorm2d(self.fpn_dim),
            nn.GELU(),
            nn.ConvTranspose2d(self.fpn_dim, self.fpn_dim, kernel_size=2, stride=2))
        self.fpn2 = nn.Sequential(nn.ConvTranspose2d(self.fpn_dim, self.fpn_dim, kernel_size=2, stride=2))
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)

        self.dinov2 = DinoVisionTransformer(input_resolution, patch_size, dino_dim, layers, heads, mlp_ratio)
        self.adapter = nn.Sequential(*[MVFuser(width, d_state=d_state, d_conv=d_conv, proj_drop=adapter_proj_drop)
                                       for _ in range(layers)])
        self.adapter_proj1 = nn.Sequential(*[nn.Linear(dino_dim, width) for _ in range(layers)])
        self.adapter_proj2 = nn.Sequential(*[nn.Linear(width, dino_dim) for _ in range(layers)])
        self.adapter_proj3 = nn.Linear(dino_dim, width)

        self.register_buffer("clip_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("dino_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("dino_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.init_weights()

    @classmethod
    def from_config(cls, cfg):
        v = cfg.vision
        return cls(input_resolution=cfg.image_size, patch_size=cfg.patch_size, width=v.width,
                   layers=v.layers, heads=v.heads, output_dim=v.output_dim, drop_path_rate=v.drop_path_rate,
                   out_indices=v.out_indices, mlp_ratio=v.mlp_ratio, d_state=cfg.adapter.d_state,
                   d_conv=cfg.adapter.d_conv)

    @torch.no_grad()
    def init_weights(self):
        """Random stand-ins for the frozen pretrained towers (upstream loads CLIP ViT-L/14-336 and
        DINOv2 ViT-L/14 weights), with the initialisation the trainable parts get upstream."""
        width = self.embed_dim
        scale = width ** -0.5
        # CLIP visual (OpenAI CLIP's scheme)
        nn.init.normal_(self.conv1.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=scale)
        nn.init.normal_(self.class_embedding, std=scale)
        clip_transformer_init_(self.transformer)
        nn.init.normal_(self.proj, std=scale)
        # DINOv2 (its own scheme: trunc-normal .02 linears/embeddings, LayerScale 1e-5)
        d = self.dinov2
        nn.init.trunc_normal_(d.pos_embed, std=0.02)
        nn.init.normal_(d.cls_token, std=1e-6)
        nn.init.zeros_(d.mask_token)
        for m in d.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, LayerScale):
                m.gamma.fill_(1e-5)
        d.patch_embed.proj.reset_parameters()
        # Trainable parts: upstream keeps the constructors' defaults (PyTorch init for the
        # linears / transposed convs / BN, MVFuser's own dt/A/D init).
        for m in (*self.adapter_proj1, *self.adapter_proj2, self.adapter_proj3,
                  self.fpn1[0], self.fpn1[1], self.fpn1[3], self.fpn2[0]):
            m.reset_parameters()
        self.fpn1[1].reset_running_stats()
        for a in self.adapter:
            a.reset_parameters()

    def _embed_clip(self, x):
        """conv1 patches + class token + resized positional embedding, ln_pre; -> [L, B, C]."""
        x = self.conv1(x)
        B, C, H, W = x.shape
        x = x.reshape(B, C, -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(B, 1, C, dtype=x.dtype, device=x.device)
        x = torch.cat([cls, x], dim=1)
        pos = self.positional_embedding.to(x.dtype)
        # The class embedding is added a second time through the class position: upstream.
        cls_pos = pos[0, :] + self.class_embedding.to(x.dtype)
        spatial_pos = F.interpolate(
            pos[1:].reshape(1, self.spatial_size[0], self.spatial_size[1], C).permute(0, 3, 1, 2),
            size=(H, W), mode="bilinear", align_corners=False)
        spatial_pos = spatial_pos.reshape(1, C, H * W).permute(0, 2, 1)
        x = x + torch.cat([cls_pos.reshape(1, 1, C), spatial_pos], dim=1)
        x = self.ln_pre(x)
        return x.permute(1, 0, 2), H, W

    def forward(self, x, use_adapter=True):
        # DINOv2 sees the same pixels re-normalised with ImageNet statistics (same op order as
        # upstream: undo CLIP's normalisation, then apply ImageNet's).
        original = x * self.clip_std + self.clip_mean
        dino_in = (original - self.dino_mean) / self.dino_std
        dinov2_x = self.dinov2.prepare_tokens_with_masks(dino_in)      # [B, L, C]

        x, H, W = self._embed_clip(x)                                   # [L, B, C]
        B = dinov2_x.shape[0]
        n_tok = dinov2_x.shape[1]
        features = []
        for i, blk in enumerate(self.transformer.resblocks):
            x = blk(x)
            dinov2_x = self.dinov2.blocks[i](dinov2_x)
            if use_adapter:
                fused = self.adapter[i](torch.cat((self.adapter_proj1[i](dinov2_x), x.permute(1, 0, 2)), dim=1))
                dinov2_x = dinov2_x + self.adapter_proj2[i](fused[:, :n_tok, :])
                x = x + fused[:, n_tok:, :].permute(1, 0, 2)
            if i in self.out_indices:
                dino_map = dinov2_x[:, 1:, :].permute(0, 2, 1).reshape(B, -1, H, W)
                clip_map = x.permute(1, 0, 2)[:, 1:, :].permute(0, 2, 1).reshape(B, -1, H, W)
                features.append(torch.cat([dino_map, clip_map], dim=1).contiguous())

        ops = [self.fpn1, self.fpn2, self.fpn3, self.fpn4]
        features = [ops[i](f) for i, f in enumerate(features)]

        if self.get_embeddings:
            x = x.permute(1, 0, 2) + self.adapter_proj3(dinov2_x)
            x = self.ln_post(x)
            x = x @ self.proj
            global_embedding = x[:, :1]
            visual_embedding = x[:, 1:].reshape(B, H, W, -1).permute(0, 3, 1, 2)
            features.append([global_embedding, visual_embedding])
        return tuple(features)
