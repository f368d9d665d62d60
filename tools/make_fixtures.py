#!/usr/bin/env python3
"""Reference fixtures for amg's tests, computed with timm / PyTorch / Pillow / torchvision.

Usage (once; the outputs are committed under tests/fixtures/):
    python3 -m venv .peers && .peers/bin/pip install torch timm torchvision pillow safetensors numpy
    .peers/bin/pip download torchreid==0.2.5 --no-deps -d /tmp/treid
    .peers/bin/pip install /tmp/treid/torchreid-0.2.5.tar.gz --no-deps --no-build-isolation
    .peers/bin/python tools/make_fixtures.py [OUT_DIR]

Everything the Rust tests compare against comes from here; no expected number is typed by hand.
Models are small random-weight ViTs (patch 16, the real block structure) so the files stay small.
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import timm
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
os.makedirs(os.path.join(OUT, "images"), exist_ok=True)
torch.manual_seed(0)
np.random.seed(0)
import PIL
meta = {"torch": torch.__version__, "timm": timm.__version__, "pillow": PIL.__version__}


def vit(img_size, embed_dim, depth, heads):
    return VisionTransformer(img_size=img_size, patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=heads,
                             mlp_ratio=4.0, qkv_bias=True, num_classes=0).eval()


def randomise(module, scale=0.08):
    """Weights well away from timm's tiny init, so every term of the forward pass matters."""
    g = torch.Generator().manual_seed(1234 + sum(p.numel() for p in module.parameters()))
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight" or name.endswith(".weight") and p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))


def la_features(tokens, grid_w):
    """docs/method.md §1 retrieval feature: row-averaged patch tokens, each / (||p_i|| sqrt(P)), concatenated."""
    B, N, D = tokens.shape
    patches = tokens[:, 1:].reshape(B, -1, grid_w, D)
    parts = patches.mean(dim=2)  # [B, P, D]
    P = parts.shape[1]
    parts = parts / (parts.norm(dim=2, keepdim=True) * P ** 0.5)
    return parts.reshape(B, P * D)


# ---------------------------------------------------------------- LA-Transformer (as its model.py)
class ClassBlock(nn.Module):
    def __init__(self, input_dim, class_num, num_bottleneck):
        super().__init__()
        self.add_block = nn.Sequential(nn.Linear(input_dim, num_bottleneck), nn.BatchNorm1d(num_bottleneck), nn.Dropout(p=0.5))
        self.classifier = nn.Sequential(nn.Linear(num_bottleneck, class_num))

    def forward(self, x):
        return self.classifier(self.add_block(x))


class LATransformer(nn.Module):
    def __init__(self, model, parts, class_num, bottleneck, lmbd=8):
        super().__init__()
        self.model = model
        self.part = parts
        self.cls_token = self.model.cls_token  # registered twice, as LA-Transformer does
        self.pos_embed = self.model.pos_embed
        self.lmbd = lmbd
        for i in range(parts):
            setattr(self, "classifier" + str(i), ClassBlock(model.embed_dim, class_num, bottleneck))

    def tokens(self, x):
        return self.model.forward_features(x)

    def forward(self, x):
        x = self.tokens(x)
        cls = x[:, 0]
        B, N, D = x.shape
        parts = x[:, 1:].reshape(B, self.part, -1, D).mean(dim=2)
        return [getattr(self, "classifier" + str(i))((cls + self.lmbd * parts[:, i]) / (1 + self.lmbd)) for i in range(self.part)]


def save_ref(name, **tensors):
    save_file({k: v.detach().contiguous().float() for k, v in tensors.items()}, os.path.join(OUT, name))


with torch.no_grad():
    # ------------------------------------------------ timm A: square 64x64, safetensors checkpoint
    a = vit(64, 128, 2, 2)
    randomise(a)
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, os.path.join(OUT, "ckpt_timm_a.safetensors"))
    x = torch.randn(2, 3, 64, 64)
    t = a.forward_features(x)
    save_ref("ref_timm_a.safetensors", input=x, tokens=t, features=la_features(t, 4))

    # ------------------------------------------------ timm A resampled to 80x48 by timm itself
    a2 = vit((80, 48), 128, 2, 2)
    a2.load_state_dict(checkpoint_filter_fn(a.state_dict(), a2))
    x = torch.randn(2, 3, 80, 48)
    t = a2.forward_features(x)
    save_ref("ref_timm_a_80x48.safetensors", input=x, tokens=t, features=la_features(t, 3), pos_embed=a2.pos_embed)

    # ------------------------------------------------ timm B: non-square 64x32, 2 heads of 32, .pth under "model"
    b = vit((64, 32), 64, 1, 2)
    randomise(b)
    torch.save({"model": b.state_dict(), "epoch": 3, "arch": "tiny-test"}, os.path.join(OUT, "ckpt_timm_b.pth"))
    x = torch.randn(3, 3, 64, 32)
    t = b.forward_features(x)
    save_ref("ref_timm_b.safetensors", input=x, tokens=t, features=la_features(t, 2))

    # ------------------------------------------------ LA-Transformer .pth (bare state dict, float16 storage)
    la = LATransformer(vit(64, 128, 2, 2), parts=4, class_num=5, bottleneck=32).eval()
    randomise(la)
    la_sd = {k: (v.half() if v.is_floating_point() else v) for k, v in la.state_dict().items()}
    torch.save(la_sd, os.path.join(OUT, "ckpt_la.pth"))
    la.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in la_sd.items()})
    x = torch.randn(2, 3, 64, 64)
    t = la.tokens(x)
    logits = la(x)
    save_ref("ref_la.safetensors", input=x, tokens=t, features=la_features(t, 4), **{f"logits.{i}": l for i, l in enumerate(logits)})

    # ------------------------------------------------ LA training mode: BatchNorm on batch statistics
    # (dropout set to 0 so the logits are deterministic); running statistics are updated once.
    import copy
    la_t = copy.deepcopy(la)
    for i in range(4):
        getattr(la_t, f"classifier{i}").add_block[2].p = 0.0
    la_t.train()
    x = torch.randn(4, 3, 64, 64)
    logits = la_t(x)
    bn = [getattr(la_t, f"classifier{i}").add_block[1] for i in range(4)]
    save_ref("ref_la_train.safetensors", input=x, **{f"logits.{i}": l for i, l in enumerate(logits)},
             **{f"running_mean.{i}": b.running_mean for i, b in enumerate(bn)}, **{f"running_var.{i}": b.running_var for i, b in enumerate(bn)})

    # ------------------------------------------------ AMG reference checkpoint: heads and tokens pruned the reference way
    # Heads kept per layer (positional in the pruned tensors) and token_index masks over CLS + 16 patches.
    amg_heads = [[1], [0, 1]]
    amg_tokens = [list(range(17)), [0, 2, 3, 5, 8, 9, 13, 16]]
    sd = {k: v.float().clone() for k, v in la_sd.items()}
    hd = 64
    for l, keep in enumerate(amg_heads):
        p = f"model.blocks.{l}.attn."
        w = sd[p + "qkv.weight"].reshape(3, 2, hd, 128)[:, keep].reshape(-1, 128)
        bq = sd[p + "qkv.bias"].reshape(3, 2, hd)[:, keep].reshape(-1)
        pw = sd[p + "proj.weight"].reshape(128, 2, hd)[:, keep].reshape(128, -1)
        sd[p + "qkv.weight"], sd[p + "qkv.bias"], sd[p + "proj.weight"] = w.contiguous(), bq.contiguous(), pw.contiguous()
        mask = torch.zeros(17, dtype=torch.bool)
        mask[amg_tokens[l]] = True
        sd[p + "token_index"] = mask
    amg_sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    torch.save({"state_dict": amg_sd, "channels": [torch.tensor(len(tk)) for tk in amg_tokens],
                "heads": [np.int64(len(h)) for h in amg_heads]}, os.path.join(OUT, "ckpt_amg.pth"))

    def reference_pruned_forward(sdf, x, heads_kept, masks, prefix, grid_w):
        """The reference code's Attention: K and V for all tokens, then x[:, :, token_index]."""
        g = lambda k: sdf[prefix + k].float()
        B = x.shape[0]
        z = F.conv2d(x, g("patch_embed.proj.weight"), g("patch_embed.proj.bias"), stride=16).flatten(2).transpose(1, 2)
        z = torch.cat([g("cls_token").expand(B, -1, -1), z], 1) + g("pos_embed")
        for l, (h, m) in enumerate(zip(heads_kept, masks)):
            p = f"blocks.{l}."
            y = F.layer_norm(z, (128,), g(p + "norm1.weight"), g(p + "norm1.bias"), 1e-6)
            N = y.shape[1]
            qkv = F.linear(y, g(p + "attn.qkv.weight"), g(p + "attn.qkv.bias")).reshape(B, N, 3, h, hd).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            k, v = k[:, :, m, :], v[:, :, m, :]
            att = ((q @ k.transpose(-2, -1)) * hd ** -0.5).softmax(-1)
            o = (att @ v).transpose(1, 2).reshape(B, N, h * hd)
            z = z + F.linear(o, g(p + "attn.proj.weight"), g(p + "attn.proj.bias"))
            y = F.layer_norm(z, (128,), g(p + "norm2.weight"), g(p + "norm2.bias"), 1e-6)
            z = z + F.linear(F.gelu(F.linear(y, g(p + "mlp.fc1.weight"), g(p + "mlp.fc1.bias"))), g(p + "mlp.fc2.weight"), g(p + "mlp.fc2.bias"))
        z = F.layer_norm(z, (128,), g("norm.weight"), g("norm.bias"), 1e-6)
        return z

    x = torch.randn(2, 3, 64, 64)
    masks = [amg_sd[f"model.blocks.{l}.attn.token_index"] for l in range(2)]
    t = reference_pruned_forward(amg_sd, x, [len(h) for h in amg_heads], masks, "model.", 4)
    amg_model = LATransformer(vit(64, 128, 2, 2), parts=4, class_num=5, bottleneck=32).eval()
    cls = t[:, 0]
    parts = t[:, 1:].reshape(2, 4, -1, 128).mean(dim=2)
    logits = []
    for i in range(4):
        fc_w, fc_b = amg_sd[f"classifier{i}.add_block.0.weight"].float(), amg_sd[f"classifier{i}.add_block.0.bias"].float()
        bn = [amg_sd[f"classifier{i}.add_block.1.{s}"].float() for s in ("weight", "bias", "running_mean", "running_var")]
        c_w, c_b = amg_sd[f"classifier{i}.classifier.0.weight"].float(), amg_sd[f"classifier{i}.classifier.0.bias"].float()
        zz = F.linear((cls + 8 * parts[:, i]) / 9, fc_w, fc_b)
        zz = F.batch_norm(zz, bn[2], bn[3], bn[0], bn[1], training=False, eps=1e-5)
        logits.append(F.linear(zz, c_w, c_b))
    save_ref("ref_amg.safetensors", input=x, tokens=t, features=la_features(t, 4), **{f"logits.{i}": l for i, l in enumerate(logits)})
    meta["amg_heads_kept"] = [len(h) for h in amg_heads]
    meta["amg_tokens"] = amg_tokens

    # ------------------------------------------------ a plan with original head indices, applied to timm A
    # The pruned computation written directly (docs/method.md §3.4: K, V from kept tokens only).
    plan = {"heads": [[1], [0, 1]], "tokens": [list(range(17)), [0, 1, 4, 6, 7, 10, 15]]}
    asd = a.state_dict()
    x = torch.randn(2, 3, 64, 64)
    B = 2
    z = F.conv2d(x, asd["patch_embed.proj.weight"], asd["patch_embed.proj.bias"], stride=16).flatten(2).transpose(1, 2)
    z = torch.cat([asd["cls_token"].expand(B, -1, -1), z], 1) + asd["pos_embed"]
    for l in range(2):
        p = f"blocks.{l}."
        y = F.layer_norm(z, (128,), asd[p + "norm1.weight"], asd[p + "norm1.bias"], 1e-6)
        W, bias = asd[p + "attn.qkv.weight"].reshape(3, 2, hd, 128), asd[p + "attn.qkv.bias"].reshape(3, 2, hd)
        outs = []
        yk = y[:, plan["tokens"][l]]
        for h in plan["heads"][l]:
            q = y @ W[0, h].T + bias[0, h]
            k = yk @ W[1, h].T + bias[1, h]
            v = yk @ W[2, h].T + bias[2, h]
            outs.append(((q @ k.transpose(-2, -1)) * hd ** -0.5).softmax(-1) @ v)
        o = torch.cat(outs, dim=-1)
        pw = asd[p + "attn.proj.weight"].reshape(128, 2, hd)[:, plan["heads"][l]].reshape(128, -1)
        z = z + o @ pw.T + asd[p + "attn.proj.bias"]
        y = F.layer_norm(z, (128,), asd[p + "norm2.weight"], asd[p + "norm2.bias"], 1e-6)
        z = z + F.linear(F.gelu(F.linear(y, asd[p + "mlp.fc1.weight"], asd[p + "mlp.fc1.bias"])), asd[p + "mlp.fc2.weight"], asd[p + "mlp.fc2.bias"])
    t = F.layer_norm(z, (128,), asd["norm.weight"], asd["norm.bias"], 1e-6)
    save_ref("ref_timm_a_plan.safetensors", input=x, tokens=t, features=la_features(t, 4))
    meta["plan_timm_a"] = plan

    # ------------------------------------------------ a checkpoint whose pickle holds an object amg must not build
    class NotData:
        pass
    torch.save({"state_dict": {"w": torch.zeros(2)}, "heads": [NotData()], "channels": [torch.tensor(3)]}, os.path.join(OUT, "ckpt_opaque.pth"))

    # ------------------------------------------------ resampling: timm's pos-embed interpolation, Pillow's bicubic
    rs = {}
    grid = torch.randn(1, 6, 5, 7)
    for (oh, ow) in [(9, 4), (3, 8), (6, 5), (2, 2)]:
        rs[f"float_{oh}x{ow}"] = F.interpolate(grid, size=(oh, ow), mode="bicubic", antialias=True).permute(0, 2, 3, 1)[0]
    rs["float_src"] = grid.permute(0, 2, 3, 1)[0]
    rng = np.random.RandomState(5)
    src = (rng.rand(37, 23, 3) * 255).astype(np.uint8)
    src[5:20, 4:15] = [250, 10, 128]  # edges, to exercise clipping
    rs8 = {"u8_src": torch.from_numpy(src.astype(np.float32))}
    # Pillow 13 runs the vertical pass first when the height shrinks by > 2x the width's shrink: cover both orders.
    for (oh, ow) in [(64, 32), (16, 11), (37, 50), (20, 23), (80, 23), (16, 20), (20, 40), (30, 5)]:
        out = np.asarray(Image.fromarray(src).resize((ow, oh), Image.BICUBIC))
        rs8[f"u8_{oh}x{ow}"] = torch.from_numpy(out.astype(np.float32))
    save_ref("ref_resample.safetensors", **rs, **rs8)

    # ------------------------------------------------ images: torchvision's pipeline, then timm A end to end
    tf = transforms.Compose([transforms.Resize((64, 64), interpolation=transforms.InterpolationMode.BICUBIC), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    names = []
    inputs = []
    for i, (h, w) in enumerate([(128, 64), (64, 64), (45, 70), (100, 37)]):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx * 7 + yy * 13 + i * 50) % 256)], axis=-1).astype(np.uint8)
        img[h // 4:h // 2, w // 3:w // 2] = [20 + 40 * i, 200, 90]
        noise = rng.randint(0, 40, size=img.shape).astype(np.uint8)
        img = np.clip(img.astype(np.int32) + noise - 20, 0, 255).astype(np.uint8)
        name = f"img{i}_{h}x{w}.png"
        Image.fromarray(img).save(os.path.join(OUT, "images", name))
        names.append(name)
        inputs.append(tf(Image.open(os.path.join(OUT, "images", name)).convert("RGB")))
    x = torch.stack(inputs)
    t = a.forward_features(x)
    save_ref("ref_images.safetensors", input=x, features=la_features(t, 4))
    meta["images"] = names

    # ------------------------------------------------ parameter counts of the presets, as timm counts them
    meta["timm_params"] = {p: sum(q.numel() for q in timm.create_model(f"vit_{p}_patch16_224", pretrained=False, num_classes=0).parameters())
                           for p in ("tiny", "small", "base")}

# ---------------------------------------------------------------- Re-ID metrics: torchreid's evaluate_rank
import importlib.util
_spec = importlib.util.spec_from_file_location(
    "torchreid_rank", os.path.join(importlib.util.find_spec("torchreid").submodule_search_locations[0], "reid", "metrics", "rank.py"))
rank = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rank)  # the module alone: torchreid's package __init__ pulls in everything else


def stable_argsort(a, axis=-1, kind=None, order=None):
    # torchreid leaves the order of equal distances to numpy's (unstable) default sort; amg's rule
    # is gallery order, so the references pin it for the cases with ties.
    return np.argsort_orig(a, axis=axis, kind="stable")


np.argsort_orig = np.argsort


def minp(distmat, q_pids, g_pids, q_camids, g_camids):
    """mINP as in Ye et al.'s AGW evaluation: per valid query, #true matches / (1 + position of the last one)."""
    vals = []
    for i in range(distmat.shape[0]):
        order = np.argsort_orig(distmat[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        hits = (g_pids[order][keep] == q_pids[i]).astype(np.int64)
        if not hits.any():
            continue
        last = np.where(hits == 1)[0].max()
        vals.append(hits.cumsum()[last] / (last + 1.0))
    return float(np.mean(vals)), len(vals)


def torchreid_metrics(distmat, q_pids, g_pids, q_camids, g_camids, ties, max_rank=50):
    # torchreid needs every query's kept gallery to hold max_rank entries (its CMC rows must align).
    if ties:
        rank.np.argsort = stable_argsort
    try:
        cmc, mAP = rank.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank, use_cython=False)
    finally:
        rank.np.argsort = np.argsort_orig
    mi, valid = minp(distmat, q_pids, g_pids, q_camids, g_camids)
    return cmc, mAP, mi, valid


metric_cases = {}
mr = np.random.RandomState(11)
for case, (nq, ng, ties) in {"random": (12, 80, False), "ties": (10, 70, True)}.items():
    q_pids = mr.randint(1, 7, size=nq)
    g_pids = mr.randint(0, 8, size=ng)  # 0: distractors; 7: nobody's query
    g_pids[:3] = -1                     # junk rows are just non-matches to torchreid
    q_pids[0] = 9                       # a query whose identity is not in the gallery
    q_camids = mr.randint(1, 4, size=nq)
    g_camids = mr.randint(1, 4, size=ng)
    # a query whose only matches are under its own camera: skipped
    g_pids[g_pids == q_pids[1]] = 8
    g_pids[-1], g_camids[-1] = q_pids[1], q_camids[1]
    d = mr.rand(nq, ng).astype(np.float32)
    if ties:
        d = np.round(d * 4) / 4
    cmc, mAP, mi, valid = torchreid_metrics(d, q_pids, g_pids, q_camids, g_camids, ties)
    save_ref(f"ref_metrics_{case}.safetensors", distmat=torch.from_numpy(d), q_pids=torch.from_numpy(q_pids.astype(np.float32)),
             g_pids=torch.from_numpy(g_pids.astype(np.float32)), q_camids=torch.from_numpy(q_camids.astype(np.float32)),
             g_camids=torch.from_numpy(g_camids.astype(np.float32)))
    metric_cases[case] = {"cmc": [float(v) for v in cmc], "mAP": float(mAP), "mINP": mi, "valid_queries": valid}
meta["metrics"] = metric_cases

# ---------------------------------------------------------------- a tiny dataset through the PyTorch pipeline
# Market-1501 layout, PNG (lossless, so both sides see the same pixels), timm B (64x32 input).
reid = os.path.join(OUT, "reid_tiny")
for d in ("bounding_box_train", "query", "bounding_box_test"):
    os.makedirs(os.path.join(reid, d), exist_ok=True)
ir = np.random.RandomState(21)
# Look-alike identities (shared colours) and heavy noise, so the ranking is far from perfect.
shared = ir.randint(0, 256, size=(2, 3))
id_colours = {pid: np.stack([shared[pid % 2], ir.randint(0, 256, size=3), shared[(pid // 2) % 2]]) for pid in range(1, 9)}


def person_png(path, pid, cam, k):
    h, w = [(80, 40), (64, 32), (96, 48), (70, 30)][(pid + cam + k) % 4]
    img = (ir.rand(h, w, 3) * 90 + ir.randint(0, 150, size=3)).astype(np.uint8)  # background
    if pid >= 0:
        c = id_colours.get(pid, ir.randint(0, 256, size=(3, 3)))
        t = ir.randint(0, 6)
        img[h // 8 + t: h // 2, w // 4 + t // 2: 3 * w // 4] = c[0]
        img[h // 2: 7 * h // 8, w // 3: 2 * w // 3] = c[2]
        img[h // 4 + t: h // 3 + t, w // 3: 2 * w // 3] = c[1]
    img = np.clip(img.astype(np.int32) + ir.randint(-70, 70, size=img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)


def name(pid, cam, k):
    return f"{pid:04d}_c{cam}s1_{k * 37 + cam:06d}_0{k % 10}.png" if pid >= 0 else f"-1_c{cam}s1_{k:06d}_00.png"


for pid in (1, 2, 3):
    for k in range(2):
        person_png(os.path.join(reid, "bounding_box_train", name(pid, 1 + k, k)), pid, 1 + k, k)
q_list, g_list = [], []
for pid in range(4, 9):
    for k in range(4):
        cam = 1 + (k + pid) % 3
        split = "query" if k == 0 else "bounding_box_test"
        n = name(pid, cam, k)
        person_png(os.path.join(reid, split, n), pid, cam, k)
        (q_list if split == "query" else g_list).append((n, pid, cam))
for k in range(3):  # distractors
    n = name(0, 1 + k, 50 + k)
    person_png(os.path.join(reid, "bounding_box_test", n), 0, 1 + k, 50 + k)
    g_list.append((n, 0, 1 + k))
n = name(-1, 2, 60)  # junk, ignored
person_png(os.path.join(reid, "bounding_box_test", n), -1, 2, 60)
with open(os.path.join(reid, "bounding_box_test", "Thumbs.db"), "w") as f:
    f.write("not an image")
q_list.sort()
g_list.sort()
b = vit((64, 32), 64, 1, 2)
b.load_state_dict(torch.load(os.path.join(OUT, "ckpt_timm_b.pth"))["model"])
tf_b = transforms.Compose([transforms.Resize((64, 32), interpolation=transforms.InterpolationMode.BICUBIC), transforms.ToTensor(),
                           transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


def feats(split, items, flip):
    x = torch.stack([tf_b(Image.open(os.path.join(reid, split, n)).convert("RGB")) for n, _, _ in items])
    with torch.no_grad():
        f = la_features(b.forward_features(x), 2)
        if flip:
            g = la_features(b.forward_features(torch.flip(x, dims=[3])), 2)
            f = (f + g) / 2
            parts = f.reshape(f.shape[0], 2, -1)
            f = (parts / (parts.norm(dim=2, keepdim=True) * 2 ** 0.5)).reshape(f.shape[0], -1)
    return f.numpy()


e2e = {}
for flip in (False, True):
    qf, gf = feats("query", q_list, flip), feats("bounding_box_test", g_list, flip)
    dist = -(qf @ gf.T)
    arr = lambda items, i: np.array([it[i] for it in items])
    cmc, mAP, mi, _ = torchreid_metrics(dist, arr(q_list, 1), arr(g_list, 1), arr(q_list, 2), arr(g_list, 2), ties=False, max_rank=10)
    e2e["flip" if flip else "plain"] = {"rank1": float(cmc[0]), "rank5": float(cmc[4]), "rank10": float(cmc[9]), "mAP": float(mAP), "mINP": mi,
                                        "queries": len(q_list), "gallery": len(g_list)}
meta["reid_tiny"] = e2e

# ---------------------------------------------------------------- one training step: loss and every gradient
# A small LA model in amg's own model-directory format (2 heads of 32, so a head can be pruned), a
# head- and token-pruned student, the unpruned model as a frozen teacher; BatchNorm in training
# mode, dropout off; loss = sum over parts of CE (label smoothing) + alpha tau^2 KL / numel.
torch.manual_seed(5)
G = dict(D=64, heads=2, hd=32, depth=2, M=256, parts=4, C=5, nb=32, H=64, W=64)
N = 1 + (G["H"] // 16) * (G["W"] // 16)


def amg_config(heads, tokens):
    return {"format": "amg-model", "format_version": 1,
            "arch": {"embed_dim": G["D"], "depth": G["depth"], "num_heads": G["heads"], "head_dim": G["hd"], "mlp_dim": G["M"],
                     "patch_size": 16, "ln_eps": 1e-6, "qkv_bias": True},
            "input": {"height": G["H"], "width": G["W"], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            "layers": [{"heads": h, "tokens": t} for h, t in zip(heads, tokens)],
            "head": {"type": "la", "num_classes": G["C"], "bottleneck": G["nb"], "lambda": 8.0},
            "source": {"format": "fixture", "path": "tools/make_fixtures.py", "amg_version": ""}}


def init_params(heads):
    D, hd, M = G["D"], G["hd"], G["M"]
    p = {"patch_embed.proj.weight": 0.05 * torch.randn(D, 3, 16, 16), "patch_embed.proj.bias": 0.1 * torch.randn(D),
         "cls_token": 0.5 * torch.randn(1, 1, D), "pos_embed": 0.3 * torch.randn(1, N, D),
         "norm.weight": 1 + 0.2 * torch.randn(D), "norm.bias": 0.1 * torch.randn(D)}
    for l, h in enumerate(heads):
        b = f"blocks.{l}."
        I = len(h) * hd
        p.update({b + "norm1.weight": 1 + 0.2 * torch.randn(D), b + "norm1.bias": 0.1 * torch.randn(D),
                  b + "attn.qkv.weight": 0.15 * torch.randn(3 * I, D), b + "attn.qkv.bias": 0.1 * torch.randn(3 * I),
                  b + "attn.proj.weight": 0.15 * torch.randn(D, I), b + "attn.proj.bias": 0.1 * torch.randn(D),
                  b + "norm2.weight": 1 + 0.2 * torch.randn(D), b + "norm2.bias": 0.1 * torch.randn(D),
                  b + "mlp.fc1.weight": 0.12 * torch.randn(M, D), b + "mlp.fc1.bias": 0.1 * torch.randn(M),
                  b + "mlp.fc2.weight": 0.08 * torch.randn(D, M), b + "mlp.fc2.bias": 0.1 * torch.randn(D)})
    for i in range(G["parts"]):
        b = f"parts.{i}."
        p.update({b + "bottleneck.weight": 0.2 * torch.randn(G["nb"], D), b + "bottleneck.bias": 0.1 * torch.randn(G["nb"]),
                  b + "bn.weight": 1 + 0.1 * torch.randn(G["nb"]), b + "bn.bias": 0.1 * torch.randn(G["nb"]),
                  b + "bn.running_mean": 0.1 * torch.randn(G["nb"]), b + "bn.running_var": 0.5 + torch.rand(G["nb"]),
                  b + "classifier.weight": 0.3 * torch.randn(G["C"], G["nb"]), b + "classifier.bias": 0.1 * torch.randn(G["C"])})
    return p


def la_forward(p, x, heads, tokens, train, store=None):
    """The LA model written out (docs/method.md §1, §3.4): K, V from kept tokens only. With `store`, each
    layer's attention probabilities are appended to it, with their gradient retained."""
    D, hd = G["D"], G["hd"]
    B = x.shape[0]
    z = F.conv2d(x, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=16).flatten(2).transpose(1, 2)
    z = torch.cat([p["cls_token"].expand(B, -1, -1), z], 1) + p["pos_embed"]
    for l in range(G["depth"]):
        b = f"blocks.{l}."
        h = len(heads[l])
        I = h * hd
        y = F.layer_norm(z, (D,), p[b + "norm1.weight"], p[b + "norm1.bias"], 1e-6)
        W, bb = p[b + "attn.qkv.weight"], p[b + "attn.qkv.bias"]
        q = (y @ W[:I].T + bb[:I]).reshape(B, N, h, hd).transpose(1, 2)
        yk = y[:, tokens[l]]
        nk = yk.shape[1]
        k = (yk @ W[I:2 * I].T + bb[I:2 * I]).reshape(B, nk, h, hd).transpose(1, 2)
        v = (yk @ W[2 * I:].T + bb[2 * I:]).reshape(B, nk, h, hd).transpose(1, 2)
        a = ((q @ k.transpose(-2, -1)) * hd ** -0.5).softmax(-1)
        if store is not None:
            a.retain_grad()
            store.append(a)
        o = (a @ v).transpose(1, 2).reshape(B, N, I)
        z = z + o @ p[b + "attn.proj.weight"].T + p[b + "attn.proj.bias"]
        y = F.layer_norm(z, (D,), p[b + "norm2.weight"], p[b + "norm2.bias"], 1e-6)
        z = z + F.linear(F.gelu(F.linear(y, p[b + "mlp.fc1.weight"], p[b + "mlp.fc1.bias"])), p[b + "mlp.fc2.weight"], p[b + "mlp.fc2.bias"])
    t = F.layer_norm(z, (D,), p["norm.weight"], p["norm.bias"], 1e-6)
    cls = t[:, 0]
    parts = t[:, 1:].reshape(B, G["parts"], -1, D).mean(dim=2)
    logits = []
    for i in range(G["parts"]):
        b = f"parts.{i}."
        zz = F.linear((cls + 8 * parts[:, i]) / 9, p[b + "bottleneck.weight"], p[b + "bottleneck.bias"])
        zz = F.batch_norm(zz, p[b + "bn.running_mean"].clone(), p[b + "bn.running_var"].clone(), p[b + "bn.weight"], p[b + "bn.bias"], training=train, eps=1e-5)
        logits.append(F.linear(zz, p[b + "classifier.weight"], p[b + "classifier.bias"]))
    return logits


full_heads = [[0, 1], [0, 1]]
all_tokens = [list(range(N)), list(range(N))]
teacher = init_params(full_heads)
# The student: the teacher with head 0 of layer 0 removed and some key tokens of layer 1, perturbed.
st_heads, st_tokens = [[1], [0, 1]], [list(range(N)), [0, 2, 3, 5, 8, 11, 12, 16]]
student = {k: v.clone() for k, v in teacher.items()}
W0 = student["blocks.0.attn.qkv.weight"].reshape(3, 2, 32, 64)[:, [1]].reshape(-1, 64)
B0 = student["blocks.0.attn.qkv.bias"].reshape(3, 2, 32)[:, [1]].reshape(-1)
P0 = student["blocks.0.attn.proj.weight"].reshape(64, 2, 32)[:, [1]].reshape(64, -1)
student["blocks.0.attn.qkv.weight"], student["blocks.0.attn.qkv.bias"], student["blocks.0.attn.proj.weight"] = W0, B0, P0
for k in student:
    if not k.endswith("running_mean") and not k.endswith("running_var"):
        student[k] = (student[k] + 0.02 * torch.randn(student[k].shape)).contiguous()
for name, params, heads, toks in [("grad_teacher", teacher, full_heads, all_tokens), ("grad_student", student, st_heads, st_tokens)]:
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(amg_config(heads, toks), f, indent=1)
    save_file({k: v.contiguous() for k, v in params.items()}, os.path.join(d, "model.safetensors"))

x = torch.randn(6, 3, 64, 64)
labels = torch.tensor([0, 3, 1, 4, 3, 2])
alpha, tau, smoothing = 0.2, 2.0, 0.1
with torch.no_grad():
    t_logits = la_forward(teacher, x, full_heads, all_tokens, train=False)
leaves = {k: v.clone().requires_grad_(not (k.endswith("running_mean") or k.endswith("running_var"))) for k, v in student.items()}
s_logits = la_forward(leaves, x, st_heads, st_tokens, train=True)
ce = sum(F.cross_entropy(l, labels, label_smoothing=smoothing) for l in s_logits)
kd = sum(F.kl_div(F.log_softmax(s / tau, dim=1), F.log_softmax(t / tau, dim=1), reduction="sum", log_target=True) * tau * tau / s.numel()
         for s, t in zip(s_logits, t_logits))
hard = sum(F.cross_entropy(s, t.argmax(dim=1)) for s, t in zip(s_logits, t_logits))
loss = ce + alpha * kd
loss.backward()
grads = {k: v.grad for k, v in leaves.items() if v.grad is not None}
save_ref("ref_grad_step.safetensors", input=x, labels=labels.float(), **{f"grad.{k}": g for k, g in grads.items()})
meta["grad_step"] = {"alpha": alpha, "tau": tau, "label_smoothing": smoothing, "loss": float(loss), "ce": float(ce), "kd": float(kd),
                     "hard": float(hard), "teacher_logits_0": [float(v) for v in t_logits[0].flatten()]}

# One optimiser step from those gradients, as torch.optim does it (a few tensors suffice: the
# update is element-wise).
opt_check = ["blocks.0.attn.qkv.weight", "parts.1.bn.weight", "cls_token"]
opt_refs = {}
for name, make in [("adamw", lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)),
                   ("adam", lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3)),
                   ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True))]:
    ps = [student[k].clone().requires_grad_(True) for k in opt_check]
    opt = make(ps)
    for step in range(2):  # two steps, so momentum / moment estimates matter
        for p_, k in zip(ps, opt_check):
            p_.grad = grads[k].clone() * (1.0 + step)
        opt.step()
    for p_, k in zip(ps, opt_check):
        opt_refs[f"{name}.{k}"] = p_.detach()
save_ref("ref_optim.safetensors", **opt_refs)
meta["optim_tensors"] = opt_check

# ---------------------------------------------------------------- docs/method.md §2 and §3 computed with PyTorch hooks
# A small LA model (head-pruned and token-pruned in layer 1) on reid_tiny's training split, in
# sorted file-name order, batches of 4 (the last one smaller), inference mode.
G = dict(D=64, heads=2, hd=32, depth=2, M=256, parts=4, C=3, nb=32, H=64, W=32)
N = 1 + (G["H"] // 16) * (G["W"] // 16)
torch.manual_seed(9)
an_heads, an_tokens = [[0, 1], [1]], [list(range(N)), [0, 1, 3, 4, 6, 8]]
an = init_params([[0, 1], [0, 1]])
W1 = an["blocks.1.attn.qkv.weight"].reshape(3, 2, 32, 64)[:, [1]].reshape(-1, 64)
B1 = an["blocks.1.attn.qkv.bias"].reshape(3, 2, 32)[:, [1]].reshape(-1)
P1 = an["blocks.1.attn.proj.weight"].reshape(64, 2, 32)[:, [1]].reshape(64, -1)
an["blocks.1.attn.qkv.weight"], an["blocks.1.attn.qkv.bias"], an["blocks.1.attn.proj.weight"] = W1.contiguous(), B1.contiguous(), P1.contiguous()
d = os.path.join(OUT, "analyze_model")
os.makedirs(d, exist_ok=True)
with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(amg_config(an_heads, an_tokens), f, indent=1)
save_file({k: v.contiguous() for k, v in an.items()}, os.path.join(d, "model.safetensors"))

train_dir = os.path.join(reid, "bounding_box_train")
files = sorted(f for f in os.listdir(train_dir) if f.endswith(".png"))
pids = sorted({int(f.split("_")[0]) for f in files})
labels = torch.tensor([pids.index(int(f.split("_")[0])) for f in files])
tf_a = transforms.Compose([transforms.Resize((G["H"], G["W"]), interpolation=transforms.InterpolationMode.BICUBIC), transforms.ToTensor(),
                           transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
xs = torch.stack([tf_a(Image.open(os.path.join(train_dir, f)).convert("RGB")) for f in files])


an_batch = 4
attn_sum = None
importance = [torch.zeros(len(t), dtype=torch.float64) for t in an_tokens]
params = {k: v.clone().requires_grad_(not (k.endswith("running_mean") or k.endswith("running_var"))) for k, v in an.items()}
for s0 in range(0, len(files), an_batch):
    x, y = xs[s0:s0 + an_batch], labels[s0:s0 + an_batch]
    store = []
    logits = la_forward(params, x, an_heads, an_tokens, train=False, store=store)
    loss = sum(F.cross_entropy(l, y) for l in logits)
    loss.backward()
    sums = [a.detach().double().sum(0) for a in store]  # [H, N, Nk], every image counts once
    attn_sum = sums if attn_sum is None else [u + v for u, v in zip(attn_sum, sums)]
    for l, a in enumerate(store):
        B, Hh, Nq, _ = a.shape
        v = (a.grad.double() * a.detach().double()).sum(dim=(0, 1, 2)) / (B * Hh * Nq)
        importance[l] += v.abs()
entropy = []
for s_ in attn_sum:
    m = s_ / len(files)
    entropy.append([float(v) for v in (-(m * torch.log2(m)).sum(-1).mean(-1))])
imp_full = []
for l, t in enumerate(an_tokens):
    row = [None] * (N - 1)
    for pos, v in zip(t, importance[l]):
        if pos > 0:
            row[pos - 1] = float(v)
    imp_full.append(row)
meta["analyze"] = {"batch_size": an_batch, "images": len(files), "head_entropy": entropy, "token_importance": imp_full}

with open(os.path.join(OUT, "fixtures.json"), "w") as f:
    json.dump(meta, f, indent=1)
print("fixtures written to", os.path.abspath(OUT))
