"""amg_torch against the outside world and against amg: each committed test fixture is imported (and,
for some, pruned by a plan) and exported with `amg export --format pytorch`, loaded with
torch.load(weights_only=True) into amg_torch's module, and
  1. run on the fixture's reference input: its features (and logits) must equal the PyTorch
     references tools/fixtures/make_fixtures.py and tools/fixtures/make_transreid_fixtures.py
     recorded, within 1e-4;
  2. run on the fixture images, preprocessed as amg does (Pillow bicubic resize, /255, mean/std):
     its features must equal `amg embed`'s, within 1e-4;
  3. saved back with amg_torch.save and imported again: `amg embed` must give the same features,
     within 1e-4 (they are equal bit for bit today).

The amg binary is $AMG, or target/release/amg of this checkout. `pytest python/tests` runs the
checks; `python python/tests/test_roundtrip.py` prints each difference as a table.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

import amg_torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
AMG = os.environ.get("AMG") or os.path.join(ROOT, "target", "release", "amg")
TOLERANCE = 1e-4


def F(name):
    return os.path.join(FIXTURES, name)


def amg(*a):
    r = subprocess.run([AMG, *a], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"amg {' '.join(a)} failed:\n{r.stderr}")


def embed(model_dir, out, sie=False):
    # The fixture images' names give no camera: a model with SIE gets camera index 0 for all.
    amg("embed", "--model", model_dir, "--images", F("images"), "--out", out, "--force", *(["--camera", "0"] if sie else []))
    return load_file(out)["features"]


def images_as_amg_reads_them(cfg):
    h, w = cfg["input"]["height"], cfg["input"]["width"]
    mean, std = np.array(cfg["input"]["mean"], np.float32), np.array(cfg["input"]["std"], np.float32)
    names = sorted(n for n in os.listdir(F("images")) if n.lower().endswith((".png", ".jpg", ".jpeg")))
    xs = []
    for n in names:
        img = Image.open(os.path.join(F("images"), n)).convert("RGB").resize((w, h), Image.BICUBIC)
        x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
        xs.append(((x - mean) / std).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(xs))


def cases():
    plan_a = json.load(open(F("fixtures.json")))["plan_timm_a"]
    plan_tr = json.load(open(F("transreid.json")))["jpm_sie_plan"]
    tr_jpm = ["--from", "transreid", F("ckpt_transreid_jpm_sie.pth"), "--checkpoint-img-size", "64x40", "--stride", "12", "--heads", "2"]
    return [
        ("timm .safetensors 64x64", ["--from", "timm", F("ckpt_timm_a.safetensors")], None, "ref_timm_a"),
        ("timm .pth 64x32, 2 heads of 32", ["--from", "timm", F("ckpt_timm_b.pth"), "--checkpoint-img-size", "64x32", "--heads", "2"], None, "ref_timm_b"),
        ("timm with a head + token plan", ["--from", "timm", F("ckpt_timm_a.safetensors")], plan_a, "ref_timm_a_plan"),
        ("LA-Transformer .pth (fp16)", ["--from", "la-transformer", F("ckpt_la.pth")], None, "ref_la"),
        ("AMG reference .pth (heads + tokens pruned)", ["--from", "amg", F("ckpt_amg.pth")], None, "ref_amg"),
        ("TransReID JPM + SIE, stride 12, 64x40", tr_jpm, None, "ref_transreid_jpm_sie"),
        ("TransReID JPM + SIE, pruned (trunk, b1, b2)", tr_jpm, plan_tr, "ref_transreid_jpm_sie:pruned."),
        ("TransReID 256x128 stride 12, BN feature", ["--from", "transreid", F("ckpt_transreid_stride12_256x128.pth"), "--neck-feat", "after"], None,
         "ref_transreid_stride12_256x128"),
    ]


def differences(work, imp, plan, ref):
    """The three differences of the module docstring, for one fixture."""
    W = lambda *p: os.path.join(work, *p)  # noqa: E731
    d = W("model")
    amg("import", *imp, "--out", d)
    if plan is not None:
        json.dump(plan, open(W("plan.json"), "w"))
        amg("prune", "--model", d, "--plan", W("plan.json"), "--out", d + "-pruned")
        d += "-pruned"
    pth = W("model.pth")
    amg("export", "--model", d, "--format", "pytorch", "--out", pth)
    model, cfg = amg_torch.load(pth)
    ref, _, pre = ref.partition(":")
    r = load_file(F(ref + ".safetensors"))
    sie = bool(cfg["arch"].get("sie"))
    with torch.no_grad():
        cams = torch.from_numpy(r["cameras"]).long() if sie else None
        feats, logits = model(torch.from_numpy(r["input"]), cams)
        d_ref = float(np.abs(feats.numpy() - r[pre + "features"]).max())
        for p, l in enumerate(logits):
            d_ref = max(d_ref, float(np.abs(l.numpy() - r[f"{pre}logits.{p}"]).max()))
        want = embed(d, W("embed.safetensors"), sie)
        x = images_as_amg_reads_them(cfg)
        got, _ = model(x, torch.zeros(len(x), dtype=torch.long) if sie else None)
        d_amg = float(np.abs(got.numpy() - want).max())
    amg_torch.save(model, cfg, W("back.pth"))
    fmt = "transreid" if cfg["head"]["type"] == "bnneck" else "amg"
    amg("import", "--from", fmt, W("back.pth"), "--out", d + "-back")
    d_back = float(np.abs(embed(d + "-back", W("back.embed.safetensors"), sie) - want).max())
    return d_ref, d_amg, d_back


@pytest.fixture(scope="module", autouse=True)
def amg_binary():
    if not os.path.isfile(AMG):
        pytest.fail(f"the amg binary is not at {AMG}: build it (cargo build --release) or set AMG")


@pytest.mark.parametrize("name,imp,plan,ref", cases(), ids=[c[0] for c in cases()])
def test_round_trip(tmp_path, name, imp, plan, ref):
    d_ref, d_amg, d_back = differences(str(tmp_path), imp, plan, ref)
    assert d_ref <= TOLERANCE, f"{name}: the module differs from the PyTorch reference by {d_ref:.2e}"
    assert d_amg <= TOLERANCE, f"{name}: the module differs from amg embed by {d_amg:.2e}"
    assert d_back <= TOLERANCE, f"{name}: saved back and re-imported, amg embed moved by {d_back:.2e}"


def test_fine_tuned_weights_come_back_to_amg(tmp_path):
    """The use the package exists for: a pruned export fine-tuned in PyTorch (here one SGD step on
    its part classifiers' loss) and saved back gives amg the fine-tuned model — `amg embed` of the
    re-imported model equals the fine-tuned module's features, and differs from the model before."""
    _, imp, plan, _ = cases()[2]  # timm with a head + token plan
    W = lambda *p: str(tmp_path.joinpath(*p))  # noqa: E731
    amg("import", *imp, "--out", W("m"))
    json.dump(plan, open(W("plan.json"), "w"))
    amg("prune", "--model", W("m"), "--plan", W("plan.json"), "--out", W("pruned"))
    amg("export", "--model", W("pruned"), "--format", "pytorch", "--out", W("pruned.pth"))
    model, cfg = amg_torch.load(W("pruned.pth"))
    x = images_as_amg_reads_them(cfg)
    before = embed(W("pruned"), W("before.safetensors"))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    feats, _ = model(x)
    loss = feats.pow(3).sum()  # any differentiable objective moves the weights
    loss.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        tuned, _ = model(x)
    amg_torch.save(model, cfg, W("tuned.pth"))
    amg("import", "--from", "amg", W("tuned.pth"), "--out", W("tuned"))
    after = embed(W("tuned"), W("after.safetensors"))
    assert float(np.abs(after - before).max()) > 1e-3, "the fine-tuning step did not reach amg"
    assert float(np.abs(after - tuned.numpy()).max()) <= TOLERANCE, "amg's re-imported model differs from the fine-tuned module"


def test_load_refuses_weights_that_do_not_fit_the_config(tmp_path):
    _, imp, _, _ = cases()[0]
    amg("import", *imp, "--out", str(tmp_path / "m"))
    amg("export", "--model", str(tmp_path / "m"), "--format", "pytorch", "--out", str(tmp_path / "m.pth"))
    ck = torch.load(str(tmp_path / "m.pth"), weights_only=True)
    cfg = json.loads(ck["amg_config"])
    cfg["layers"][0]["heads"] = cfg["layers"][0]["heads"][:1]  # the config now says one head, the weights have more
    ck["amg_config"] = json.dumps(cfg)
    torch.save(ck, str(tmp_path / "bad.pth"))
    with pytest.raises((ValueError, RuntimeError)):
        amg_torch.load(str(tmp_path / "bad.pth"))


if __name__ == "__main__":
    print(f"torch {torch.__version__}; every checkpoint loads with torch.load(weights_only=True)\n")
    print("| fixture | module vs PyTorch reference | module vs `amg embed` | saved back, re-imported: `amg embed` vs before |")
    print("|---|---|---|---|")
    worst = 0.0
    for name, imp, plan, ref in cases():
        with tempfile.TemporaryDirectory() as work:
            a, b, c = differences(work, imp, plan, ref)
        worst = max(worst, a, b, c)
        print(f"| {name} | {a:.1e} | {b:.1e} | {c:.1e} |")
    sys.exit(0 if worst <= TOLERANCE else 1)
