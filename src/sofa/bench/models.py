"""``sofa bench models``: images per second and peak memory of whole networks, ours beside timm's alternatives.

Settings: batch 8, 224² and 448² inputs, inference (eval mode, ``torch.inference_mode``), float32 on the CPU, and
bfloat16 (CPU autocast) where asked for. ``mode="train"`` times the training step instead (:func:`train_step`:
train mode, forward, cross-entropy on random labels, backward and one AdamW step; batch 32 by default), its FLOPs
those of the forward and the backward (the optimizer's element-wise update is not counted).
Each (model, size, dtype) runs in a fresh process. The "fraction of
matmul peak" column is the model's achieved FLOP rate (2 × multiply–accumulates of one forward, counted by
``sofa.models.flops``, a dispatcher-level counter that sees every matmul and convolution, Newton iterations
included, divided by the median time) over the rate of a large fp32 GEMM (2048³) timed in the same process just
before the model, so that both see the same machine load.
"""

from __future__ import annotations

import contextlib
import statistics
from typing import Callable, Dict, List, Optional, Sequence

import torch

from sofa.bench import measure, memory
from sofa.bench.isolation import run_isolated
from sofa.bench.measure import DTYPES

#: our models: the families and the pooling/attention hybrids
SOFA_MODELS = (
    "soft_tiny",
    "soft_norm_tiny",
    "setformer_mini",
    "poolformer_s12",
    "poolformer_s12_soft",
    "poolformer_s12_set",
    "poolformer_s12_attn",
)
#: what a user would pick instead, from timm
TIMM_MODELS = ("poolformer_s12", "pvt_v2_b1", "deit_tiny_patch16_224", "convnext_atto")
DEFAULT_SIDES = (224, 448)
QUICK_SOFA = ("poolformer_mini",)
QUICK_TIMM = ("resnet18",)


def parse_model(token: str) -> tuple:
    """ "timm:NAME" or "NAME" (sofa's) → (source, name)."""
    if ":" in token:
        src, name = token.split(":", 1)
        if src not in ("sofa", "timm"):
            raise ValueError(f"model source must be 'sofa' or 'timm', got {src!r} in {token!r}")
        return src, name
    return "sofa", token


def model_kwargs(name: str) -> tuple:
    """ "NAME[key=value;key=value]" → (NAME, {key: value}) (values read as Python literals, else strings), so that
    a variant can be benchmarked without a registry entry: ``soft_tiny[max_landmarks=49]``."""
    import ast

    if not name.endswith("]") or "[" not in name:
        return name, {}
    base, args = name[:-1].split("[", 1)
    kw = {}
    for item in filter(None, (a.strip() for a in args.split(";"))):
        if "=" not in item:
            raise ValueError(f"model arguments are key=value separated by ';', got {item!r} in {name!r}")
        k, v = (t.strip() for t in item.split("=", 1))
        try:
            kw[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            kw[k] = v
    return base, kw


def create(source: str, name: str, side: int) -> torch.nn.Module:
    name, kw = model_kwargs(name)
    if source == "timm":
        import timm

        # fixed-size ViTs accept other input sizes when told at construction
        if any(k in name for k in ("deit", "vit_")):
            kw.setdefault("img_size", side)
        return timm.create_model(name, pretrained=False, **kw)
    import sofa.models

    return sofa.models.create_model(name, **kw)


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> Optional[int]:
    """FLOPs of one forward of ``x`` (2 × MACs), by sofa's counter (:func:`sofa.models.flops.flop_counter`)."""
    from sofa.models.flops import flop_counter

    try:
        with torch.no_grad(), flop_counter() as counter:
            model(x)
        return int(counter.get_total_flops())
    except Exception:  # a model the counter cannot trace: the column stays empty
        return None


#: what ``spec["mode"]`` may be: an inference forward, or a whole training step
MODES = ("inference", "train")


def _prepare(spec: Dict, tokens: Sequence[str]):
    """The models for ``tokens`` (eval mode; train mode where ``spec["mode"]`` is "train") and one input batch,
    with the spec's device, threads, seed and layout: (models, x, device, dtype)."""
    device = torch.device(spec.get("device", "cpu"))
    dtype = DTYPES[spec.get("dtype", "fp32")]
    side, batch = int(spec["side"]), int(spec.get("batch", 8))
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(0)
    train = spec.get("mode", "inference") == "train"
    models = [create(*parse_model(tok), side).to(device).train(train) for tok in tokens]
    x = torch.randn(batch, 3, side, side, device=device)
    if spec.get("channels_last"):
        models = [m.to(memory_format=torch.channels_last) for m in models]
        x = x.contiguous(memory_format=torch.channels_last)
    return models, x, device, dtype


def _compiled(model: torch.nn.Module, spec: Dict) -> torch.nn.Module:
    if not spec.get("compile"):
        return model
    return torch.compile(model, mode=None if spec["compile"] is True else spec["compile"])


def run_case(spec: Dict) -> Dict:
    """Measure one (model, size, dtype) case in this process: the PyTorch model, or with ``spec["runtime"] ==
    "onnxruntime"`` an ONNX Runtime CPU session of it (:func:`onnx_step`)."""
    (model,), x, device, dtype = _prepare(spec, [f"{spec['source']}:{spec['name']}"])
    onnx = spec.get("runtime", "pytorch") == "onnxruntime"
    train = spec.get("mode", "inference") == "train"
    rec: Dict = {"params": sum(p.numel() for p in model.parameters())}
    # FLOPs of the whole batch that is timed, not batch × one image's: work done once per call (SeT's Nyström
    # root, a function of the parameters alone) would be counted once per image
    if train:
        rec["flops"] = count_train_flops(model, x, dtype)
        step = train_step(_compiled(model, spec), x, device, dtype)
    else:
        rec["flops"] = count_flops(model, x)
        step = onnx_step(model, x) if onnx else _step(_compiled(model, spec), x, device, dtype)

    # the machine's matmul rate, in this process just before the model: the fraction-of-peak column compares
    # like with like even when the machine's load changes during a long run
    gemm = measure.matmul_peak(device, size=int(spec.get("gemm_size", 1024)), repeats=5)
    rec["gemm_flops_per_s"] = gemm["flops_per_s"]
    rec.update(measure.time_case(step, spec, device, warmup=2, min_repeats=5))
    if spec.get("profile") and not onnx:
        from sofa.bench.profile import bound_by, profile_step

        rec["profile"] = profile_step(step)
        rec["bound_by"] = bound_by(rec["profile"])
    if not onnx:  # ONNX Runtime's memory arena is filled in the warm-up runs: one more call adds nothing to see
        rec.update(memory.peak_memory(step, device))
    return rec


def count_train_flops(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype) -> Optional[int]:
    """FLOPs of one forward and backward of ``x`` (2 × MACs) with the loss of :func:`train_step`, by sofa's
    counter; the gradients it leaves are cleared."""
    from sofa.models.flops import flop_counter

    try:
        with flop_counter() as counter:
            _loss(model, x, x.device, dtype).backward()
        return int(counter.get_total_flops())
    except Exception:  # a model the counter cannot trace: the column stays empty
        return None
    finally:
        model.zero_grad(set_to_none=True)


def _loss(model: torch.nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Cross-entropy of the model's logits for ``x`` against fixed random labels (autocast to ``dtype`` unless
    float32)."""
    ctx = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    with ctx:
        logits = model(x)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, logits.shape[-1], (logits.shape[0],), generator=g).to(logits.device)
    return torch.nn.functional.cross_entropy(logits.float(), labels)


def train_step(model: torch.nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype):
    """A step of training on ``x``: gradients cleared (set to None), forward and cross-entropy on random labels
    (under autocast to ``dtype`` unless float32), backward, one AdamW update (PyTorch's default implementation
    for the device). The model must be in train mode."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = _loss(model, x, device, dtype)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def onnx_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """A step that runs ``x`` through an ONNX Runtime CPU session of ``model``: the model exported at ``x``'s
    shape (:func:`sofa.export.export_onnx`), with as many intra-op threads as torch uses. Needs the export
    extra."""
    import tempfile
    from pathlib import Path

    from sofa.export import export_onnx, require_export_extra

    require_export_extra()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, Path(folder) / "model.onnx", tuple(x.shape[2:]), batch=x.shape[0])
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.contiguous().cpu().numpy()}
    return lambda: session.run(None, feed)


def _step(model, x, device: torch.device, dtype: torch.dtype):
    def step():
        ctx = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            return model(x)

    return step


def _same_backbone(ours: torch.nn.Module, theirs: torch.nn.Module, x: torch.Tensor) -> Optional[float]:
    """Give our PoolFormer timm's port's weights; the largest difference of the last stage maps relative to
    their scale (None where the pair is not a PoolFormer pair)."""
    from sofa.models.poolformer import checkpoint_filter_fn, is_timm

    state = theirs.state_dict()
    if not (is_timm(state) and hasattr(ours, "forward_intermediates")):
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the head warning: only the stage maps are compared
        ours.load_state_dict(checkpoint_filter_fn(state))
    with torch.inference_mode():
        a = ours.forward_intermediates(x, indices=[3], intermediates_only=True)[0].float()
        b = theirs.forward_features(x).float()
    return float((a - b).abs().max() / b.abs().max())


def onednn_work(model: torch.nn.Module, x: torch.Tensor) -> Optional[Callable[[], None]]:
    """A step that does only the oneDNN work of our PoolFormer's CPU inference on ``x``: every block's two MLP
    GEMMs, with their fused GELU and in-place residual add, over the same chunks and prepacked weights as
    :func:`sofa.ops.fused_mlp.metaformer_mlp_`, and the stem and downsampling convolutions, on the inputs they see
    in a real forward; no norms, pooling, statistics or normalisation of chunks. Its time is a floor for the model's
    with these kernels (None where the model does not take that path: not a MetaFormer with pooling / identity
    blocks in float32 on the CPU, or no oneDNN kernels)."""
    from sofa.models.metaformer import MetaFormerBlock
    from sofa.ops import fused_mlp as fm

    blocks = [m for m in model.modules() if isinstance(m, MetaFormerBlock)]
    convs = [getattr(model, "stem", None)] + [getattr(s, "downsample", None) for s in getattr(model, "stages", [])]
    convs = [getattr(c, "conv", None) for c in convs if c is not None]
    convs = [c for c in convs if isinstance(c, torch.nn.Conv2d)]
    if not blocks or x.device.type != "cpu" or x.dtype != torch.float32 or fm.choose_impl() != "onednn":
        return None
    seen: Dict[torch.nn.Module, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, a: seen.setdefault(m, a[0].detach().clone())) for m in blocks + convs
    ]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    with torch.inference_mode():
        if not all(b in seen and b.chosen_impl(seen[b]) == "fused_cpu" for b in blocks):
            return None
    work: List[Callable[[], None]] = []
    for c in (c for c in convs if c in seen):
        work.append(
            lambda c=c, t=seen[c]: torch.nn.functional.conv2d(
                t, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups
            )
        )
    for b in blocks:
        t = seen[b]
        B, C, H, W = t.shape
        L = B * H * W
        rows = fm.chunk_rows(L, b.mlp.fc1.weight.shape[0], 4, fm.mlp_chunk_bytes())
        params = (
            b.mlp.fc1.weight,
            b.mlp.fc1.bias,
            b.norm2.weight,
            b.norm2.bias,
            b.layer_scale2,
            b.mlp.fc2.weight,
            b.mlp.fc2.bias,
        )
        tokens = t.permute(0, 2, 3, 1).reshape(L, C).clone()  # the residual the GEMMs add into
        n = tokens[:rows].clone()  # the chunk input (the real operator normalises each chunk into such a buffer)
        packs = {k: fm.packed_weights(params, k, True) for k in {min(rows, L - i) for i in range(0, L, rows)}}

        def gemms(tokens=tokens, n=n, rows=rows, L=L, packs=packs):
            for i in range(0, L, rows):
                j = min(L, i + rows)
                fm.onednn_chunk_(tokens[i:j], n[: j - i], *packs[j - i])

        work.append(gemms)

    def step():
        with torch.inference_mode():
            for w in work:
                w()

    return step


def run_pair(spec: Dict) -> Dict:
    """Two models (``spec["models"]``: ours, then the one it is compared with) timed in turn in one process
    (A B B A ...), so that a change of the machine's load hits both alike: the speed-up is the median over the
    ABBA blocks of t_B / t_A. For a PoolFormer pair ours first takes timm's weights and the stage outputs are
    compared (``max_rel_diff``). Where ours runs the fused CPU path, :func:`onednn_work` is timed in the same turns:
    ``bound_speedup`` is the speed-up ours would have over the other if everything but its oneDNN GEMMs and
    convolutions took no time."""
    models, x, device, dtype = _prepare(spec, spec["models"])
    batch = x.shape[0]
    rec: Dict = {"max_rel_diff": _same_backbone(models[0], models[1], x[:2])}
    floor = onednn_work(models[0], x) if dtype == torch.float32 else None
    models = [_compiled(m, spec) for m in models]
    steps = {"a": _step(models[0], x, device, dtype), "b": _step(models[1], x, device, dtype)}
    if floor is not None:
        steps["c"] = floor
    t = measure.time_interleaved(
        steps, repeats=int(spec.get("repeats", 9)), warmup=int(spec.get("warmup", 3)), device=device
    )
    ratios = measure.paired_ratios(t["a"]["times_s"], t["b"]["times_s"])
    rec.update(
        speedup=statistics.median(ratios),
        speedup_runs=ratios,
        runs=len(ratios),
        images_per_s=[batch / t["a"]["median_s"], batch / t["b"]["median_s"]],
    )
    if floor is not None:
        bound = measure.paired_ratios(t["c"]["times_s"], t["b"]["times_s"])
        rec.update(
            bound_speedup=statistics.median(bound),
            bound_speedup_runs=bound,
            bound_images_per_s=batch / t["c"]["median_s"],
        )
    return rec


#: (ours, theirs) pairs timed in turn for the speed-up goals, when both are in a run
PAIRS = (("poolformer_s12", "timm:poolformer_s12"),)


def bench_models(
    models: Sequence[str],
    sides: Sequence[int] = DEFAULT_SIDES,
    dtypes: Sequence[str] = ("fp32",),
    batch: int = 8,
    repeats: int = 5,
    warmup: int = 2,
    device: str = "cpu",
    threads: Optional[int] = None,
    isolate: bool = True,
    mode: str = "inference",
    compile: bool | str = False,
    channels_last: bool = False,
    budget_s: float = 60.0,
    gemm_size: int = 2048,
    profile: bool = False,
    runtime: str = "pytorch",
    log: Callable[[str], None] = print,
) -> List[Dict]:
    """Measure every (model, size, dtype); the first record is the GEMM peak of the same run. With ``runtime=
    "onnxruntime"`` every float32 case is also measured as an ONNX Runtime CPU session, a record of its own
    (``"runtime": "onnxruntime"``) after PyTorch's. ``mode="train"`` times training steps (:func:`train_step`),
    PyTorch only, no pairs."""
    if mode not in MODES:
        raise ValueError(f"bench_models: mode must be one of {MODES}, got {mode!r}")
    if mode == "train":
        runtime = "pytorch"
    g = _gemm(device, threads, gemm_size, isolate, log)
    records: List[Dict] = [{"bench": "gemm", "dtype": "fp32", "device": device, "status": "ok", **g}]
    common = dict(
        batch=batch,
        device=device,
        threads=threads,
        repeats=repeats,
        warmup=warmup,
        compile=compile,
        channels_last=channels_last,
        budget_s=budget_s,
        profile=profile,
        gemm_size=gemm_size,
        mode=mode,
    )
    for side in sides:
        for dt in dtypes:
            for token in models:
                for rt in ("pytorch", "onnxruntime") if runtime == "onnxruntime" and dt == "fp32" else ("pytorch",):
                    rec = _model_record(token, dict(common, side=side, dtype=dt, runtime=rt), isolate, g)
                    records.append(rec)
                    log(_line(rec))
    for a, b in PAIRS if mode == "inference" else ():
        if a in models and b in models:
            records += [_pair_record(a, b, dict(common, side=s, dtype=d), isolate, log) for s in sides for d in dtypes]
    return records


def _gemm(device: str, threads: Optional[int], size: int, isolate: bool, log: Callable[[str], None]) -> Dict:
    """The fp32 GEMM peak of this run (the peak column is always against it), logged."""
    spec = {"device": device, "threads": threads, "size": size, "repeats": 7}
    g = run_isolated("gemm", spec) if isolate else measure.matmul_peak(device, size=size, repeats=7)
    libs = ", ".join(f"{k} {g[k]['flops_per_s'] / 1e9:.1f}" for k in ("blas", "onednn") if k in g)
    log(f"GEMM {size}x{size}x{size} fp32: {g['flops_per_s'] / 1e9:.1f} GFLOP/s (median of 7, {g['library']}; {libs})")
    return g


def _model_record(token: str, case: Dict, isolate: bool, gemm: Dict) -> Dict:
    """One (model, side, dtype, runtime) ``case`` measured (in a fresh process where ``isolate``): its record,
    ``status`` "failed" with the reason where it raised. ONNX Runtime runs neither compiled nor channels-last."""
    source, name = parse_model(token)
    spec = dict(case, source=source, name=name)
    if case["runtime"] == "onnxruntime":
        spec.update(compile=False, channels_last=False, profile=False)
    base = {"bench": "models", "source": source, "model": name}
    base.update({k: spec[k] for k in ("side", "batch", "dtype", "device")})
    base.update(compile=spec["compile"] or False, channels_last=spec["channels_last"], runtime=spec["runtime"])
    base.update(mode=spec.get("mode", "inference"))
    try:
        rec = dict(base, status="ok", **(run_isolated("model", spec) if isolate else run_case(spec)))
    except Exception as err:
        return dict(base, status="failed", reason=f"{type(err).__name__}: {err}"[:500])
    rec["images_per_s"] = spec["batch"] / rec["median_s"]
    if rec.get("flops"):
        rec["flops_per_s"] = rec["flops"] / rec["median_s"]
        rec["fraction_of_matmul_peak"] = rec["flops_per_s"] / rec.get("gemm_flops_per_s", gemm["flops_per_s"])
    return rec


def _pair_record(a: str, b: str, case: Dict, isolate: bool, log: Callable[[str], None]) -> Dict:
    """The pair (ours ``a``, theirs ``b``) timed in turn (:func:`run_pair`) at ``case``'s side and dtype, logged."""
    base = {"bench": "model_pair", "models": [a, b]}
    base.update({k: case[k] for k in ("side", "batch", "dtype", "device")})
    base.update(compile=case["compile"] or False, channels_last=case["channels_last"])
    spec = dict(base, threads=case["threads"], repeats=max(case["repeats"], 12), warmup=max(case["warmup"], 3))
    head = f"{a} / {b} {case['side']}² {case['dtype']}"
    try:
        rec = dict(base, status="ok", **(run_isolated("model_pair", spec) if isolate else run_pair(spec)))
    except Exception as err:
        rec = dict(base, status="failed", reason=f"{type(err).__name__}: {err}"[:500])
        log(f"{head}: failed: {rec['reason']}")
        return rec
    diff = "" if rec["max_rel_diff"] is None else f", same weights: stage-4 maps agree to {rec['max_rel_diff']:.1e}"
    bound = (
        ""
        if rec.get("bound_speedup") is None
        else f"; its oneDNN GEMMs and convolutions alone: {rec['bound_speedup']:.2f}×"
    )
    log(f"{head}, timed in turn: {rec['speedup']:.2f}× (median of {rec['runs']} pairs{diff}{bound})")
    return rec


def _line(r: Dict) -> str:
    rt = "  onnxruntime" if r.get("runtime") == "onnxruntime" else ""
    rt += "  train" if r.get("mode") == "train" else ""
    head = f"{r['source']}:{r['model']:24s} {r['side']}² {r['dtype']:4s}{rt}"
    if r["status"] != "ok":
        return f"{head}  {r['status']}: {r.get('reason', '')}"
    frac = r.get("fraction_of_matmul_peak")
    frac = f"{100 * frac:5.1f}% of GEMM" if frac else ""
    return (
        f"{head}  {r['images_per_s']:8.1f} img/s  peak {measure.fmt_bytes(r.get('peak_mem_bytes')):>9s}  "
        f"{(r.get('flops') or 0) / r['batch'] / 1e9:6.2f} GFLOP/img  {frac}"
    )
