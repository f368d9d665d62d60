#!/usr/bin/env python3
"""TransReID reference fixtures for amg's tests (tests/fixtures/transreid_*): small random-weight
TransReID models, their checkpoints as TransReID's training code saves them (`base.*`,
`bottleneck*`, `classifier*`, with JPM `b1.*` / `b2.*`; one under nn.DataParallel's `module.`),
and reference outputs for a random batch.

The reference modules below are written for this script from the TransReID paper (He et al.,
ICCV 2021) and the behaviour of its public code, not copied from it:
  * overlapping patch embedding: a 16x16 convolution at stride s (grid (side - 16) // s + 1);
  * SIE: coefficient x camera embedding added to every token after the position embedding;
  * BNNeck: BatchNorm1d on the class token (bias frozen), ID classifier without bias; the test
    feature is taken before or after the BatchNorm;
  * JPM: the backbone stops before its last block; b1 (a copy of the last block + norm) gives the
    global feature, b2 (another copy + norm) runs on the class token followed by each of 4 groups
    of patches after a shift by SHIFT_NUM and a shuffle in SHUFFLE_GROUP groups; the feature is
    [global, local_1/4, ..., local_4/4];
  * TransReID's ViT-S has no qkv bias and scales attention by embed_dim^-0.5.
TransReID's evaluator L2-normalises the concatenated feature (TEST.FEAT_NORM), as `features`
here. A pruned variant removes heads (their outputs zeroed: the same function as slicing them
out) and key/value tokens.

    python3 -m venv .peers && .peers/bin/pip install torch safetensors numpy
    .peers/bin/python tools/make_transreid_fixtures.py [OUT_DIR]
"""
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
torch.manual_seed(11)


class Attention(nn.Module):
    def __init__(self, d, heads, bias, scale):
        super().__init__()
        self.heads, self.hd, self.scale = heads, d // heads, scale
        self.qkv = nn.Linear(d, 3 * d, bias=bias)
        self.proj = nn.Linear(d, d)

    def forward(self, x, keep_heads=None, keep_tokens=None):
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        if keep_tokens is not None:
            k, v = k[:, :, keep_tokens], v[:, :, keep_tokens]
        a = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        o = a @ v  # [B, H, N, hd]
        if keep_heads is not None:
            mask = torch.zeros(self.heads)
            mask[keep_heads] = 1.0
            o = o * mask.view(1, -1, 1, 1)
        return self.proj(o.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, d, heads, mlp, bias, scale):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.attn = Attention(d, heads, bias, scale)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.mlp = Mlp(d, mlp)

    def forward(self, x, plan=None):
        kh, kt = plan if plan is not None else (None, None)
        x = x + self.attn(self.norm1(x), kh, kt)
        return x + self.mlp(self.norm2(x))


class Base(nn.Module):
    """The TransReID backbone (`base.*`): overlapping patches, class token, SIE."""

    def __init__(self, size, stride, d, depth, heads, mlp, bias, scale, cameras):
        super().__init__()
        gh, gw = (size[0] - 16) // stride + 1, (size[1] - 16) // stride + 1
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, d, 16, stride=stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + gh * gw, d))
        self.sie_embed = nn.Parameter(torch.zeros(cameras, 1, d)) if cameras > 1 else None
        self.blocks = nn.ModuleList([Block(d, heads, mlp, bias, scale) for _ in range(depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.fc = nn.Linear(d, 1000)  # ImageNet head TransReID keeps but never runs

    def forward(self, x, cams, coe, trunk_only, plans):
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), t], dim=1) + self.pos_embed
        if self.sie_embed is not None:
            t = t + coe * self.sie_embed[cams]
        run = self.blocks[:-1] if trunk_only else self.blocks
        for i, blk in enumerate(run):
            t = blk(t, plans[i] if plans else None)
        return t if trunk_only else self.norm(t)


def shift_and_shuffle(feat, shift, groups):
    patches = torch.cat([feat[:, shift:], feat[:, 1:shift]], dim=1)
    if patches.shape[1] % groups:
        patches = torch.cat([patches, patches[:, -2:-1]], dim=1)
    B, L, D = patches.shape
    return patches.reshape(B, groups, L // groups, D).transpose(1, 2).reshape(B, L, D)


class TransReID(nn.Module):
    def __init__(self, size, stride, d, depth, heads, mlp, classes, cameras=0, coe=3.0, jpm=False, bias=True, scale=None,
                 neck_after=False, shift=5, groups=2, rearrange=True):
        super().__init__()
        scale = scale if scale is not None else (d // heads) ** -0.5
        self.base = Base(size, stride, d, depth, heads, mlp, bias, scale, cameras)
        self.coe, self.jpm, self.neck_after = coe, jpm, neck_after
        self.shift, self.groups, self.rearrange = shift, groups, rearrange
        necks = 5 if jpm else 1
        if jpm:
            self.b1 = nn.Sequential(Block(d, heads, mlp, bias, scale), nn.LayerNorm(d, eps=1e-6))
            self.b2 = nn.Sequential(Block(d, heads, mlp, bias, scale), nn.LayerNorm(d, eps=1e-6))
        for i in range(necks):
            sfx = "" if i == 0 else f"_{i}"
            setattr(self, "classifier" + sfx, nn.Linear(d, classes, bias=False))
            setattr(self, "bottleneck" + sfx, nn.BatchNorm1d(d))

    def branch(self, seq, b, plan=None):
        return b[1](b[0](seq, plan))

    def forward(self, x, cams, plans=None, b2_heads=None):
        """Returns (global-branch tokens, raw pieces, bn pieces, logits, feature)."""
        plans = plans or []
        if not self.jpm:
            tokens = self.base(x, cams, self.coe, False, plans)
            raw = [tokens[:, 0]]
        else:
            trunk = self.base(x, cams, self.coe, True, plans)
            tokens = self.branch(trunk, self.b1, plans[-1] if plans else None)
            raw = [tokens[:, 0]]
            n = trunk.shape[1] - 1
            length = n // 4
            xs = shift_and_shuffle(trunk, self.shift, self.groups) if self.rearrange else trunk[:, 1:]
            for k in range(4):
                seq = torch.cat([trunk[:, 0:1], xs[:, k * length:(k + 1) * length]], dim=1)
                raw.append(self.branch(seq, self.b2, (b2_heads, None) if b2_heads is not None else None)[:, 0])
        bn = [getattr(self, "bottleneck" + ("" if i == 0 else f"_{i}"))(r) for i, r in enumerate(raw)]
        logits = [getattr(self, "classifier" + ("" if i == 0 else f"_{i}"))(y) for i, y in enumerate(bn)]
        pieces = bn if self.neck_after else raw
        feat = torch.cat([pieces[0]] + [p / 4 for p in pieces[1:]], dim=1)
        return tokens, feat, logits


@torch.no_grad()
def randomise(m, g):
    for name, p in m.named_parameters():
        if name.endswith("bias") and "bottleneck" in name:
            continue  # TransReID's BNNeck bias is frozen at zero
        if name.endswith(".weight") and p.dim() == 1:
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.08 * torch.randn(p.shape, generator=g))
    for name, b in m.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.3 * torch.randn(b.shape, generator=g))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand(b.shape, generator=g))


def state_dict(m, prefix=""):
    return {prefix + k: v.contiguous() for k, v in m.state_dict().items()}


cases = {
    # JPM + SIE, overlapping patches at stride 12, non-square 64x40 (a 5x3 grid: 15 patches, so
    # the shuffle pads one), feature before the BNNecks; saved as .pth under `module.`.
    "jpm_sie": dict(size=(64, 40), stride=12, d=64, depth=3, heads=2, mlp=128, classes=7, cameras=3, jpm=True, file="pth_module"),
    # The real TransReID grid: 256x128 at stride 12 (21x10 patches, 211 tokens), BNNeck feature
    # after the BatchNorm, no SIE, no JPM (input size and stride worked out by the importer).
    "stride12_256x128": dict(size=(256, 128), stride=12, d=64, depth=2, heads=1, mlp=128, classes=5, neck_after=True, file="pth", batch=1),
    # Stride 16, SIE, JPM without re-arrangement, feature after the BatchNorms.
    "jpm_plain_sie": dict(size=(64, 32), stride=16, d=64, depth=2, heads=2, mlp=128, classes=4, cameras=2, jpm=True, neck_after=True, rearrange=False),
    # SIE over cameras x viewpoints (TransReID's vehicle configurations): row camera * views + view.
    "sie_views": dict(size=(64, 32), stride=16, d=64, depth=2, heads=1, mlp=128, classes=3, cameras=6, views=2),
    # TransReID's ViT-S style: no qkv bias, attention scaled by embed_dim^-0.5.
    "small": dict(size=(64, 32), stride=16, d=64, depth=2, heads=2, mlp=192, classes=3, bias=False, scale=64 ** -0.5),
}

meta = {}
g = torch.Generator().manual_seed(2021)
with torch.no_grad():
    for name, c in cases.items():
        c = dict(c)
        file, batch, views = c.pop("file", "safetensors"), c.pop("batch", 2), c.pop("views", 1)
        m = TransReID(**c).eval()
        randomise(m, g)
        cams = torch.randint(0, max(c.get("cameras", 1) // views, 1), (batch,), generator=g)
        if views > 1:
            # The table has cameras x views rows: the reference indexes camera * views + view.
            view = torch.tensor([1, 0])[:batch]
            cams = cams * views + view
            meta["sie_views"] = {"cameras": (cams // views).tolist(), "views": view.tolist()}
        x = torch.randn(batch, 3, *c["size"], generator=g)
        tokens, feat, logits = m(x, cams)
        ref = {"input": x, "cameras": cams.float(), "tokens": tokens.contiguous(), "raw_features": feat.contiguous(),
               "features": F.normalize(feat, dim=1).contiguous()}
        ref.update({f"logits.{i}": l.contiguous() for i, l in enumerate(logits)})
        if name == "jpm_plain_sie":
            # The position embedding resampled to 80x48 (a 5x3 grid) as TransReID resizes it:
            # bilinear interpolation of the patch grid, the class token's row untouched.
            pos = m.base.pos_embed
            gh, gw = (c["size"][0] - 16) // c["stride"] + 1, (c["size"][1] - 16) // c["stride"] + 1
            grid = pos[0, 1:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(5, 3), mode="bilinear").permute(0, 2, 3, 1).reshape(1, 15, -1)
            ref["pos_embed_80x48"] = torch.cat([pos[:, :1], grid], dim=1).contiguous()
        if name == "jpm_sie":
            # Pruned: layer 0 keeps head 1, layer 1 (b1's input block) keeps some key tokens, the
            # b1 block keeps head 0 and drops key tokens, b2 keeps head 1.
            n = m.base.pos_embed.shape[1]
            plans = [([1], None), (None, [0, 2, 3, 5, 8, 9, 13, 15]), ([0], [0, 1, 4, 6, 7, 10, 11, 12, 14])]
            t2, f2, l2 = m(x, cams, plans=plans, b2_heads=[1])
            ref.update({"pruned.tokens": t2.contiguous(), "pruned.features": F.normalize(f2, dim=1).contiguous()})
            ref.update({f"pruned.logits.{i}": l.contiguous() for i, l in enumerate(l2)})
            meta["jpm_sie_plan"] = {
                "heads": [[1], list(range(2)), [0]],
                "tokens": [list(range(n)), plans[1][1], plans[2][1]],
                "jpm_heads": [1],
            }
        ext = "pth" if file.startswith("pth") else "safetensors"
        path = os.path.join(OUT, f"ckpt_transreid_{name}.{ext}")
        if ext == "pth":
            torch.save(state_dict(m, "module." if file == "pth_module" else ""), path)
        else:
            save_file(state_dict(m), path)
        save_file(ref, os.path.join(OUT, f"ref_transreid_{name}.safetensors"))
        print(name, "tokens", tuple(tokens.shape), "feature", tuple(feat.shape), "->", path)



def soft_triplet(feat, labels):
    """Batch-hard triplet loss with a soft margin: Euclidean distances (clamped at 1e-12 before
    the square root), the farthest positive and nearest negative per anchor, softplus(ap - an)."""
    sq = (feat * feat).sum(1, keepdim=True)
    dist = (sq + sq.t() - 2 * feat @ feat.t()).clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    ap = torch.where(same, dist, torch.full_like(dist, -1e9)).max(1).values
    an = torch.where(same, torch.full_like(dist, 1e9), dist).min(1).values
    return F.softplus(ap - an).mean()


def transreid_loss(logits, pieces, labels, smoothing):
    """TransReID's loss with JPM: ID = 0.5 CE(global) + 0.5 mean CE(local), the triplet term
    likewise on the BNNeck inputs."""
    ce = [F.cross_entropy(l, labels, label_smoothing=smoothing) for l in logits]
    tri = [soft_triplet(p, labels) for p in pieces]
    idl = 0.5 * ce[0] + 0.5 * sum(ce[1:]) / len(ce[1:])
    tl = 0.5 * tri[0] + 0.5 * sum(tri[1:]) / len(tri[1:])
    return idl + tl, idl, tl


# One training step of the JPM + SIE model: BatchNorms in training mode (batch statistics), the
# BNNeck biases frozen, label smoothing 0.1, P x K = 2 x 2 batch; every parameter's gradient.
c = dict(cases["jpm_sie"])
c.pop("file")
m = TransReID(**c)
randomise(m, g)
for name, p in m.named_parameters():
    if "bottleneck" in name and name.endswith("bias"):
        p.requires_grad_(False)
m.train()
x = torch.randn(4, 3, *c["size"], generator=g)
labels = torch.tensor([3, 3, 5, 5])
cams = torch.tensor([0, 2, 1, 0])


def train_forward(model, x, cams):
    trunk = model.base(x, cams, model.coe, True, [])
    g_ = model.b1[1](model.b1[0](trunk))[:, 0]
    n = trunk.shape[1] - 1
    xs = shift_and_shuffle(trunk, model.shift, model.groups)
    locs = [model.b2[1](model.b2[0](torch.cat([trunk[:, 0:1], xs[:, k * (n // 4):(k + 1) * (n // 4)]], 1)))[:, 0] for k in range(4)]
    pieces = [g_] + locs
    logits = [getattr(model, "classifier" + ("" if i == 0 else f"_{i}"))(getattr(model, "bottleneck" + ("" if i == 0 else f"_{i}"))(p))
              for i, p in enumerate(pieces)]
    return logits, pieces


start = {k: v.clone() for k, v in m.state_dict().items()}
logits, pieces = train_forward(m, x, cams)
loss, idl, tl = transreid_loss(logits, pieces, labels, 0.1)
loss.backward()
grads = {f"grad.{n}": p.grad.contiguous() for n, p in m.named_parameters() if p.grad is not None}
save_file(dict(**grads, input=x, labels=labels.float(), cameras=cams.float()),
          os.path.join(OUT, "ref_transreid_grad.safetensors"))
save_file({k: v.contiguous() for k, v in start.items()}, os.path.join(OUT, "ckpt_transreid_grad.safetensors"))
meta["grad"] = {"loss": loss.item(), "id": idl.item(), "triplet": tl.item(), "label_smoothing": 0.1}
print("grad step: loss", loss.item(), "id", idl.item(), "triplet", tl.item(), len(grads), "gradients")

with open(os.path.join(OUT, "transreid.json"), "w") as f:
    json.dump(meta, f, indent=1)
