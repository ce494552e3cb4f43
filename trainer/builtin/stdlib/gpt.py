"""A small GPT-style causal language model (pre-norm transformer, learned positions, tied embeddings)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 256
    seq_len: int = 128
    width: int = 128
    depth: int = 4
    heads: int = 4
    dropout: float = 0.0


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.width)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.ln2 = nn.LayerNorm(cfg.width)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, 4 * cfg.width), nn.GELU(), nn.Linear(4 * cfg.width, cfg.width))
        self.heads = cfg.heads
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """input_ids [B, T] (int64, T <= seq_len) -> logits [B, T, vocab_size]; position t predicts token t+1."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"width {cfg.width} is not divisible by heads {cfg.heads}")
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos = nn.Embedding(cfg.seq_len, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.ln = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, hidden: bool = False, layers: tuple[int, ...] | None = None):
        """-> logits [B, T, V], or with hidden=True what the output layer reads [B, T, width]; with
        `layers`, also the hidden states after those layers (0: the embeddings, depth: after the final
        norm, as Hugging Face numbers them): (out, [[B, T, width] per layer])."""
        t = input_ids.shape[1]
        if t > self.cfg.seq_len:
            raise ValueError(f"sequence of {t} tokens exceeds the model's seq_len {self.cfg.seq_len}")
        x = self.tok(input_ids) + self.pos(torch.arange(t, device=input_ids.device))
        states = [x]
        for block in self.blocks:
            x = block(x)
            states.append(x)
        last = self.ln(x)
        out = last if hidden else self.head(last)
        if layers is None:
            return out
        states[-1] = last
        return out, [states[layer] for layer in layers]

    def feature_width(self, layer: int) -> int:
        """The width of the hidden state after `layer` (0..depth)."""
        if not 0 <= layer <= self.cfg.depth:
            raise ValueError(f"its layers are 0..{self.cfg.depth}")
        return self.cfg.width

    def output_layer(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., width] -> logits [..., V]."""
        return self.head(hidden)
