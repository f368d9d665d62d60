"""The model of an `amg export --format pytorch` checkpoint as a plain PyTorch module, to fine-tune a
pruned model on a GPU and bring it back to amg.

    import amg_torch                                   # pip install ./python
    model, cfg = amg_torch.load("pruned.pth")          # torch.load(weights_only=True) inside
    features, logits = model(images)                   # images: [B, 3, H, W], normalised as cfg["input"] says
    features, logits = model(images, cameras)          # a model with SIE: cameras [B] (int64, c1 is 0)
    ...                                                # train as any nn.Module (logits: one [B, C] per part / BNNeck)
    amg_torch.save(model, cfg, "finetuned.pth")        # then: amg import --from amg (TransReID layout: --from transreid)

The module computes what amg computes (docs/method.md §1, §3.4): a ViT whose layers keep only their
heads (smaller qkv/proj weights) and compute keys and values from their kept tokens (`token_index`),
the LA head's row-averaged parts, the retrieval feature (each part scaled to norm 1/sqrt(P),
concatenated) and, with classifiers, the part logits (g = (cls + λ·p) / (1 + λ) → Linear → BatchNorm
→ Dropout → Linear). Parameter names are the checkpoint's: `model.blocks.3.attn.qkv.weight`,
`classifier2.add_block.0.weight`, … (the AMG reference code's layout). A BNNeck model (TransReID:
overlapping patches, SIE, JPM; docs/backbones.md) is a TransReIDModel in TransReID's layout
(`base.*`, `b1.*`, `b2.*`, `bottleneck_i`, `classifier_i`), computing TransReID's feature.
"""
import json

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, dim, heads, head_dim, qkv_bias, tokens, n):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[tokens] = True
        self.register_buffer("token_index", mask)

    def forward(self, x):
        b, n, _ = x.shape
        h, hd = self.heads, self.head_dim
        inner = h * hd
        w, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(x, w[:inner], None if bias is None else bias[:inner])
        kv = F.linear(x[:, self.token_index], w[inner:], None if bias is None else bias[inner:])
        k, v = kv.split(inner, dim=-1)
        q = q.view(b, n, h, hd).transpose(1, 2)
        k = k.view(b, -1, h, hd).transpose(1, 2)
        v = v.view(b, -1, h, hd).transpose(1, 2)
        attn = ((q @ k.transpose(-2, -1)) * hd ** -0.5).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, inner))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, arch, layer, n):
        super().__init__()
        d = arch["embed_dim"]
        self.norm1 = nn.LayerNorm(d, eps=arch["ln_eps"])
        self.attn = Attention(d, len(layer["heads"]), arch["head_dim"], arch["qkv_bias"], layer["tokens"], n)
        self.norm2 = nn.LayerNorm(d, eps=arch["ln_eps"])
        self.mlp = Mlp(d, arch["mlp_dim"])

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def add_sie(module, x, cameras):
    """SIE: the coefficient times each image's row of the table (its camera index, or
    camera * views + view with viewpoints), on every token (no-op without)."""
    if not module.sie:
        return x
    if cameras is None:
        raise ValueError("this model has a side information embedding: pass each image's camera index (c1 is 0)")
    return x + module.sie["coefficient"] * module.sie_embed[cameras]


class PatchEmbed(nn.Module):
    def __init__(self, dim, patch, stride):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=stride)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Backbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        a = cfg["arch"]
        d, p = a["embed_dim"], a["patch_size"]
        gh, gw = grid(cfg)
        self.prefix = int(a.get("class_token", True)) + int(a.get("dist_token", False))
        n = self.prefix + gh * gw
        self.patch_embed = PatchEmbed(d, p, a.get("patch_stride") or p)
        self.sie = a.get("sie")
        if self.sie:
            self.sie_embed = nn.Parameter(torch.zeros(self.sie["cameras"] * self.sie.get("views", 1), 1, d))
        if a.get("class_token", True):
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        if a.get("dist_token", False):
            self.dist_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, n, d))
        self.blocks = nn.ModuleList(Block(a, layer, n) for layer in cfg["layers"])
        self.norm = nn.LayerNorm(d, eps=a["ln_eps"])

    def forward(self, x, cameras=None):
        x = self.patch_embed(x)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (getattr(self, "cls_token", None), getattr(self, "dist_token", None)) if t is not None]
        x = torch.cat(prefix + [x], dim=1) + self.pos_embed
        x = add_sie(self, x, cameras)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class ClassBlock(nn.Module):
    """LA-Transformer's part classifier: add_block = [Linear, BatchNorm1d, Dropout], classifier = [Linear]."""

    def __init__(self, dim, bottleneck, classes):
        super().__init__()
        self.add_block = nn.Sequential(nn.Linear(dim, bottleneck), nn.BatchNorm1d(bottleneck), nn.Dropout(0.5))
        self.classifier = nn.Sequential(nn.Linear(bottleneck, classes))

    def forward(self, x):
        return self.classifier(self.add_block(x))


def grid(cfg):
    """Rows and columns of patches: (side - patch) // stride + 1 each way."""
    a = cfg["arch"]
    p = a["patch_size"]
    s = a.get("patch_stride") or p
    return (cfg["input"]["height"] - p) // s + 1, (cfg["input"]["width"] - p) // s + 1


def jpm_groups(cfg):
    """JPM's local groups: trunk positions (class token first) after TransReID's shift and shuffle."""
    j = cfg["arch"]["jpm"]
    gh, gw = grid(cfg)
    n = 1 + gh * gw
    if j["rearrange"]:
        v = list(range(j["shift"], n)) + list(range(1, j["shift"]))
        if len(v) % j["groups"]:
            v.append(v[-2])
        per = len(v) // j["groups"]
        order = [v[g * per + i] for i in range(per) for g in range(j["groups"])]
    else:
        order = list(range(1, n))
    length = (n - 1) // j["divide"]
    return [[0] + order[k * length:(k + 1) * length] for k in range(j["divide"])]


class TransReIDBase(nn.Module):
    """TransReID's `base`: overlapping patch embedding, class token, position and camera (SIE)
    embeddings, the blocks the trunk runs (with JPM: all but the last, which is b1)."""

    def __init__(self, cfg):
        super().__init__()
        a = cfg["arch"]
        d, p = a["embed_dim"], a["patch_size"]
        gh, gw = grid(cfg)
        n = 1 + gh * gw
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, d, kernel_size=p, stride=a.get("patch_stride") or p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, n, d))
        self.sie = a.get("sie")
        if self.sie:
            self.sie_embed = nn.Parameter(torch.zeros(self.sie["cameras"] * self.sie.get("views", 1), 1, d))
        layers = cfg["layers"][:-1] if a.get("jpm") else cfg["layers"]
        self.blocks = nn.ModuleList(Block(a, layer, n) for layer in layers)
        if not a.get("jpm"):
            self.norm = nn.LayerNorm(d, eps=a["ln_eps"])

    def forward(self, x, cameras=None):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = add_sie(self, x, cameras)
        for blk in self.blocks:
            x = blk(x)
        return x if not hasattr(self, "norm") else self.norm(x)


class TransReIDModel(nn.Module):
    """A BNNeck (TransReID) model in TransReID's layout: `base`, with JPM `b1` / `b2`, and
    `bottleneck(_i)` / `classifier(_i)`. forward(images, cameras) → (feature, logits): the
    feature as TransReID computes it ([global, local_1/k, ...], before or after the BatchNorms),
    L2-normalised; one logits tensor per BNNeck (the BatchNorms as the module's mode says)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        a, head = cfg["arch"], cfg["head"]
        d = a["embed_dim"]
        self.base = TransReIDBase(cfg)
        self.jpm = a.get("jpm")
        necks = 1
        if self.jpm:
            gh, gw = grid(cfg)
            t = 1 + (gh * gw) // self.jpm["divide"]
            self.b1 = nn.Sequential(Block(a, cfg["layers"][-1], 1 + gh * gw), nn.LayerNorm(d, eps=a["ln_eps"]))
            self.b2 = nn.Sequential(Block(a, {"heads": self.jpm["heads"], "tokens": list(range(t))}, t), nn.LayerNorm(d, eps=a["ln_eps"]))
            self.groups = jpm_groups(cfg)
            necks += self.jpm["divide"]
        self.after = head.get("neck_feat") == "after"
        for i in range(necks):
            sfx = "" if i == 0 else f"_{i}"
            setattr(self, "bottleneck" + sfx, nn.BatchNorm1d(d))
            getattr(self, "bottleneck" + sfx).bias.requires_grad_(False)
            if head["num_classes"] > 0:
                setattr(self, "classifier" + sfx, nn.Linear(d, head["num_classes"], bias=False))
        self.necks = necks

    def forward(self, x, cameras=None):
        trunk = self.base(x, cameras)
        if self.jpm:
            raw = [self.b1(trunk)[:, 0]]
            for g in self.groups:
                raw.append(self.b2(trunk[:, g])[:, 0])
        else:
            raw = [trunk[:, 0]]
        sfx = lambda i: "" if i == 0 else f"_{i}"
        bn = [getattr(self, "bottleneck" + sfx(i))(r) for i, r in enumerate(raw)]
        logits = [getattr(self, "classifier" + sfx(i))(y) for i, y in enumerate(bn) if hasattr(self, "classifier" + sfx(i))]
        pieces = bn if self.after else raw
        k = len(pieces)
        feat = torch.cat([pieces[0]] + [p / (k - 1) for p in pieces[1:]], dim=1)
        return feat / feat.norm(dim=1, keepdim=True).clamp_min(1e-12), logits


class AmgReID(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        a, head = cfg["arch"], cfg["head"]
        self.grid = grid(cfg)
        self.num_parts = self.grid[0] if head["type"] == "la" else 0
        self.lam = head.get("lambda", 8.0)
        for i in range(self.num_parts):
            setattr(self, f"classifier{i}", ClassBlock(a["embed_dim"], head["bottleneck"], head["num_classes"]))

    def forward(self, x, cameras=None):
        tokens = self.model(x, cameras)
        b, _, d = tokens.shape
        gh, gw = self.grid
        parts = tokens[:, self.model.prefix:].reshape(b, gh, gw, d).mean(dim=2)
        features = parts / (parts.norm(dim=-1, keepdim=True).clamp_min(1e-12) * gh ** 0.5)
        logits = []
        if self.num_parts:
            cls = tokens[:, 0]
            for i in range(self.num_parts):
                g = (cls + self.lam * parts[:, i]) / (1.0 + self.lam)
                logits.append(getattr(self, f"classifier{i}")(g))
        return features.reshape(b, -1), logits


def load(path, map_location="cpu"):
    """The model of an amg PyTorch export, in eval mode, and its amg configuration (a dict): a
    TransReIDModel for a BNNeck head (TransReID's layout), an AmgReID otherwise."""
    ck = torch.load(path, map_location=map_location, weights_only=True)
    cfg = json.loads(ck["amg_config"])
    model = TransReIDModel(cfg) if cfg["head"]["type"] == "bnneck" else AmgReID(cfg)
    missing, unexpected = model.load_state_dict(ck["state_dict"], strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise ValueError(f"{path}: the checkpoint does not fit its amg_config (missing {missing}, unexpected {unexpected})")
    return model.eval(), cfg


def save(model, cfg, path):
    """Writes a (fine-tuned) model back in the same layout, for `amg import --from amg` (or
    `--from transreid` for a TransReIDModel)."""
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state, "heads": [len(l["heads"]) for l in cfg["layers"]], "channels": [len(l["tokens"]) for l in cfg["layers"]],
                "amg_config": json.dumps(cfg)}, path)
