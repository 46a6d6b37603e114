"""Text branch of MFuser-CLIP: CLIP's text transformer with learned prompt tokens
(official ``CLIPTextContextEncoder``) and the ``ContextDecoder`` (MTEnhancer) that adapts the class
embeddings to the image."""

import torch
import torch.nn as nn

from .backbone import LayerNorm, Transformer, clip_transformer_init_
from .mamba import MVFuser


class CLIPTextContextEncoder(nn.Module):
    """CLIP text transformer whose input is [SOT, contexts (learned), name tokens..., EOT, pad].

    forward(text [K, N1] int64, context [B, N2, C] or [B, K, N2, C]) -> [B, K, embed_dim]:
    the ln_final row at (argmax of the token ids, i.e. EOT) + N2, projected by text_projection.
    ``context_length`` is the full length N1 + N2 (10 upstream: 5 contexts + 5 name tokens).
    """

    def __init__(self, context_length=22, vocab_size=49408, transformer_width=512, transformer_heads=8,
                 transformer_layers=12, embed_dim=1024):
        super().__init__()
        self.context_length = context_length
        self.transformer = Transformer(width=transformer_width, layers=transformer_layers,
                                       heads=transformer_heads, attn_mask=self.build_attention_mask())
        self.embed_dim = embed_dim
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        # upstream allocates these with torch.empty and fills them from CLIP (positional
        # embedding truncated from 77 to context_length rows); init_weights() gives stand-ins.
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.init_weights()

    @classmethod
    def from_config(cls, cfg):
        t = cfg.text
        return cls(context_length=cfg.text_context_length, vocab_size=t.vocab_size,
                   transformer_width=t.width, transformer_heads=t.heads, transformer_layers=t.layers,
                   embed_dim=t.embed_dim)

    def build_attention_mask(self):
        """Causal additive mask: -inf strictly above the diagonal."""
        mask = torch.full((self.context_length, self.context_length), float("-inf"))
        return mask.triu_(1)

    @torch.no_grad()
    def init_weights(self):
        """OpenAI CLIP's initialisation, standing in for the pretrained (frozen) weights."""
        width = self.transformer.width
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        clip_transformer_init_(self.transformer)
        nn.init.normal_(self.text_projection, std=width ** -0.5)
        self.ln_final.reset_parameters()

    def forward(self, text, context=None):
        x_text = self.token_embedding(text)                             # [K, N1, C]
        if context is None:
            x = x_text + self.positional_embedding
            x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
            x = self.ln_final(x)
            return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection
        K, N1, C = x_text.shape
        if context.dim() == 3:
            B, N2, _ = context.shape
            context = context.reshape(B, 1, N2, C).expand(B, K, N2, C)
        else:
            B, _, N2, _ = context.shape
        # the EOT token has the largest id, so argmax finds it; it moved N2 places right
        eos_indx = (text.argmax(dim=-1) + N2).reshape(1, K).expand(B, K).reshape(-1)
        x_text = x_text.reshape(1, K, N1, C).expand(B, K, N1, C)
        x = torch.cat([x_text[:, :, 0:1], context, x_text[:, :, 1:]], dim=2).reshape(B * K, N1 + N2, C)
        x = x + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)      # sequence-first inside
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0]), eos_indx] @ self.text_projection
        return x.reshape(B, K, self.embed_dim)


class Attention(nn.Module):
    """MTEnhancer self-attention: separate q/k/v projections (no bias), proj with bias."""

    def __init__(self, dim, num_heads=8, qkv_bias=False, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, q, k, v):
        B, N, C = q.shape
        M = k.shape[1]
        h = self.num_heads
        q = self.q_proj(q).reshape(B, N, h, C // h)
        k = self.k_proj(k).reshape(B, M, h, C // h)
        v = self.v_proj(v).reshape(B, M, h, C // h)
        attn = (torch.einsum("bnkc,bmkc->bknm", q, k) * self.scale).softmax(dim=-1)
        x = torch.einsum("bknm,bmkc->bnkc", attn, v).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class MTEnhancer(nn.Module):
    """x += attn(norm1 x); o = MVFuser([norm2 x, visual, norm2 x]); x += o[:K] + o[-K:];
    x += dropout(mlp(norm3 x)). The visual tokens sit between two copies of the text tokens so that
    the one-directional scan lets text see the image (last copy) and be seen by it (first copy)."""

    def __init__(self, d_model, nhead, dropout=0.1, d_state=16):
        super().__init__()
        self.self_attn = Attention(d_model, nhead, proj_drop=dropout)
        self.cross_attn = MVFuser(d_model, d_state=d_state)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_model * 4),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_model * 4, d_model))

    def forward(self, x, visual):
        q = k = v = self.norm1(x)
        x = x + self.self_attn(q, k, v)
        # norm2 is evaluated twice upstream (same input, same result)
        fused = self.cross_attn(torch.cat([self.norm2(x), visual, self.norm2(x)], dim=1))
        K = x.shape[1]
        x = x + fused[:, :K, :] + fused[:, -K:, :]
        x = x + self.dropout(self.mlp(self.norm3(x)))
        return x


class ContextDecoder(nn.Module):
    """forward(text [B, K, visual_dim], visual [B, 1 + hw, visual_dim]) -> [B, K, visual_dim]."""

    def __init__(self, transformer_width=256, transformer_heads=4, transformer_layers=6, visual_dim=1024,
                 dropout=0.1, d_state=16):
        super().__init__()
        self.memory_proj = nn.Sequential(
            nn.LayerNorm(visual_dim),
            nn.Linear(visual_dim, transformer_width),
            nn.LayerNorm(transformer_width))
        self.text_proj = nn.Sequential(
            nn.LayerNorm(visual_dim),
            nn.Linear(visual_dim, transformer_width))
        self.decoder = nn.ModuleList([MTEnhancer(transformer_width, transformer_heads, dropout, d_state)
                                      for _ in range(transformer_layers)])
        self.out_proj = nn.Sequential(
            nn.LayerNorm(transformer_width),
            nn.Linear(transformer_width, visual_dim))
        self.init_weights()

    @classmethod
    def from_config(cls, cfg):
        c = cfg.context_decoder
        return cls(transformer_width=c.width, transformer_heads=c.heads, transformer_layers=c.layers,
                   visual_dim=cfg.vision.output_dim, dropout=c.dropout, d_state=cfg.adapter.d_state)

    @torch.no_grad()
    def init_weights(self):
        """Upstream's constructor: MVFusers built with their own init, then ``apply(_init_weights)``
        over every submodule: Linear weights trunc-normal std .02, biases 0, LayerNorms (1, 0).
        That also reaches the MVFuser's linears: its dt_proj.bias ends up 0 (its Mamba dt init is
        overwritten; ``_no_reinit`` is not consulted by apply)."""
        for m in self.modules():
            if isinstance(m, MVFuser):
                m.reset_parameters()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, text, visual):
        visual = self.memory_proj(visual)
        x = self.text_proj(text)
        for layer in self.decoder:
            x = layer(x, visual)
        return self.out_proj(x)
