"""Train/eval transforms: timm's pipeline, driven by the model's ``pretrained_cfg`` and the run's options.

The augmentation policy (``--aa``) is timm's: RandAugment (``rand-m9-mstd0.5-inc1``), AugMix (``augmix-m3-w3``)
or an AutoAugment policy (``original``, ``originalr``, ``v0``, ``v0r``, ``3a``). Two things sofa adds:

* the policy string is checked strictly (:func:`check_auto_augment`), so a typo is one clear error at start-up
  rather than an assertion deep in timm or a section timm silently ignores (``inc`` spelt ``incl``);
* the ops of the built policy that the installed Pillow can reject run sofa's version instead
  (:data:`POLICY_OPS`, swapped into the policy's own op objects; timm itself is left untouched). Posterize is the
  one: timm's level functions ask for 0 bits (``rand-…-inc1`` at magnitudes ≥ 10, reached by ``mstd`` noise;
  ``Posterize`` at magnitudes < 2.5, as in the ``v0`` policies), which Pillow 13 refuses.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from PIL import Image, ImageOps
from timm.data import create_transform

from sofa.errors import UserError

# ------------------------------------------------------------------------------------------ policy strings
#: RandAugment sections (after ``rand``): key → type of its value (``t`` takes a name, see below)
RAND_SECTIONS: dict[str, type] = {"m": int, "n": int, "p": float, "mstd": float, "mmax": int, "inc": int}
#: the weighted / alternative op sets of ``rand-t<name>``
RAND_OP_SETS = ("weights", "3aw", "3a")
#: AugMix sections (after ``augmix``)
AUGMIX_SECTIONS: dict[str, type] = {"m": int, "w": int, "d": int, "a": float, "b": int, "mstd": float}
#: AutoAugment policies; their only section is ``mstd``
AUTO_AUGMENT_POLICIES = ("original", "originalr", "v0", "v0r", "3a")

_POLICY_HELP = (
    "expected RandAugment 'rand-<sections>' (m<magnitude> n<ops> p<prob> mstd<std> mmax<max> inc<0|1> "
    f"t<{'|'.join(RAND_OP_SETS)}>, e.g. rand-m9-mstd0.5-inc1), AugMix 'augmix-<sections>' (m w d a b mstd, "
    f"e.g. augmix-m3-w3), an AutoAugment policy ({', '.join(AUTO_AUGMENT_POLICIES)}, optionally -mstd<std>), "
    "or '' for none"
)


def check_auto_augment(policy: str) -> None:
    """Raise :class:`UserError` unless ``policy`` is a policy string timm builds exactly as written.

    timm's parser asserts on an unknown policy or key and skips a section without digits, so ``rand-m9-incl``
    would quietly train without the increasing ops; here every section must be known and carry a valid value.
    """
    name, *sections = str(policy).split("-")
    if name == "rand":
        known = RAND_SECTIONS
    elif name == "augmix":
        known = AUGMIX_SECTIONS
    elif name in AUTO_AUGMENT_POLICIES:
        known = {"mstd": float}
    else:
        raise UserError(f"--aa {policy!r}: unknown augmentation policy {name!r}; {_POLICY_HELP}")
    for section in sections:
        if name == "rand" and section.startswith("t"):
            if section[1:] not in RAND_OP_SETS:
                raise UserError(f"--aa {policy!r}: unknown RandAugment op set {section!r}; {_POLICY_HELP}")
            continue
        match = re.fullmatch(r"([a-z]+)(\d.*)", section)
        kind = known.get(match.group(1)) if match else None
        try:
            if kind is None:
                raise ValueError
            kind(match.group(2))
        except ValueError:
            raise UserError(f"--aa {policy!r}: cannot read section {section!r}; {_POLICY_HELP}") from None


# ------------------------------------------------------------------------------------------ policy ops
def posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """Keep the ``bits_to_keep`` most significant bits of every channel, for any number of bits.

    timm's level functions give 0–8 bits (fewer than 0 for magnitudes above 10 under ``mmax``). Keeping 0 or
    fewer bits keeps nothing: a black image, which is what Pillow gave before version 13 refused bits < 1, so
    the recipe trains on the same images as with the Pillow it was written for. 8 or more bits keep the image.
    """
    bits = int(bits_to_keep)
    if bits >= 8:
        return img
    if bits <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits)


#: timm op name → the function sofa runs in its place (same arguments as timm's ``NAME_TO_OP`` entries)
POLICY_OPS: dict[str, Callable[..., Image.Image]] = {
    "Posterize": posterize,
    "PosterizeIncreasing": posterize,
    "PosterizeOriginal": posterize,
}


def policy_ops(transform) -> list:
    """timm's ``AugmentOp`` objects inside a transform built by ``create_transform`` (RandAugment, AugMix or
    AutoAugment), in order; ``[]`` when it has no augmentation policy."""
    from timm.data.auto_augment import AugmentOp

    found: list = []

    def walk(obj, depth: int = 0) -> None:
        if isinstance(obj, AugmentOp):
            found.append(obj)
        elif depth < 4:  # Compose → policy → sub-policy list → op; deeper is not a policy of timm's
            for child in _children(obj):
                walk(child, depth + 1)

    walk(transform)
    return found


def _children(obj) -> list:
    if isinstance(obj, (list, tuple)):
        return list(obj)
    children: list = []
    # Compose.transforms, RandAugment.ops / AugMixAugment.ops, AutoAugment.policy (a list of sub-policies)
    for name in ("transforms", "ops", "policy"):
        value = getattr(obj, name, None)
        if isinstance(value, (list, tuple)):
            children.extend(value)
    return children


def use_policy_ops(transform):
    """Swap :data:`POLICY_OPS` into the augmentation ops of ``transform`` (a transform sofa built); returns it."""
    for op in policy_ops(transform):
        if op.name in POLICY_OPS:
            op.aug_fn = POLICY_OPS[op.name]
    return transform


def resolve_data_config(
    model,
    img_size: int | tuple[int, int] | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
) -> dict[str, Any]:
    """``{"input_size", "mean", "std", "crop_pct", "interpolation"}`` from the model's pretrained_cfg,
    with the run's image size / crop / interpolation taking precedence where given."""
    from timm.data import resolve_data_config as timm_resolve

    cfg = dict(timm_resolve({}, model=model))
    if img_size:
        hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        cfg["input_size"] = (3, int(hw[0]), int(hw[1]))
    if crop_pct:
        cfg["crop_pct"] = float(crop_pct)
    if interpolation:
        cfg["interpolation"] = interpolation
    cfg["mean"] = tuple(float(x) for x in cfg["mean"])
    cfg["std"] = tuple(float(x) for x in cfg["std"])
    cfg["input_size"] = tuple(int(x) for x in cfg["input_size"])
    return cfg


def build_transform(data_cfg: dict[str, Any], training: bool, aug: dict[str, Any] | None = None):
    """timm ``create_transform`` for training (with the augmentation options in ``aug``) or evaluation
    (resize to ``input_size / crop_pct``, centre crop, with the model's interpolation).

    Training: ``aug["aa"]`` is checked first (:func:`check_auto_augment`, a :class:`UserError` when unknown) and
    the built policy runs :data:`POLICY_OPS` in place of the ops the installed Pillow can reject."""
    common = dict(
        input_size=data_cfg["input_size"],
        interpolation=data_cfg.get("interpolation", "bicubic"),
        mean=data_cfg["mean"],
        std=data_cfg["std"],
    )
    if not training:
        return create_transform(is_training=False, crop_pct=data_cfg.get("crop_pct"), **common)
    aug = dict(aug or {})
    policy = aug.get("aa") or None
    if policy is not None:
        check_auto_augment(policy)
    train_interp = aug.pop("train_interpolation", None) or "random"
    common["interpolation"] = train_interp
    return use_policy_ops(
        create_transform(
            is_training=True,
            scale=tuple(aug.get("scale") or (0.08, 1.0)),
            ratio=tuple(aug.get("ratio") or (3 / 4, 4 / 3)),
            hflip=float(aug.get("hflip", 0.5)),
            vflip=float(aug.get("vflip", 0.0)),
            color_jitter=float(aug.get("color_jitter", 0.4) or 0.0),
            auto_augment=policy,
            re_prob=float(aug.get("reprob", 0.0) or 0.0),
            re_mode=aug.get("remode", "pixel"),
            re_count=int(aug.get("recount", 1)),
            **common,
        )
    )
