"""Hydra's composition of the config groups in params/ (as a stage run by hand composes them), beside
whatever Hydra app is running: its global state is put back afterwards.

    compose(params_dir, ["experiment=smoke", "dst.density=0.02"])   # a plain, resolved dict
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from omegaconf import DictConfig


def compose_config(params_dir: Path, overrides: Sequence[str] = (), config_name: str = "params") -> DictConfig:
    """`config_name` of `params_dir` composed with `overrides` by Hydra's compose API, as a DictConfig;
    a running app's global Hydra state is put back afterwards."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    gh = GlobalHydra.instance()
    saved = gh.hydra
    gh.clear()
    try:
        with initialize_config_dir(config_dir=str(Path(params_dir).resolve()), version_base="1.3"):
            return hydra_compose(config_name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
        if saved is not None:
            GlobalHydra.instance().initialize(saved)


def compose(params_dir: Path, overrides: Sequence[str] = (), config_name: str = "params") -> dict:
    """The same composition as a plain dict, interpolations resolved."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose_config(params_dir, overrides, config_name), resolve=True)


def presets(params_dir: Path) -> list[str]:
    """The presets of params/experiment/, by name."""
    return sorted(p.stem for p in (Path(params_dir) / "experiment").glob("*.yaml"))


def preset_overrides(params_dir: Path, name) -> list[str]:
    """The overrides that compose preset `name` (params/experiment/<name>.yaml): `experiment=<name>`,
    or none when no such preset exists (a run of the defaults names itself after theirs)."""
    return [f"experiment={name}"] if (Path(params_dir) / "experiment" / f"{name}.yaml").is_file() else []
