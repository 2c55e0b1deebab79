"""report: figures of the run (plots/*.png) and reports/summary.md, from the histories, the
evaluation and the model files' masks; in W&B the evaluation table, the figures, the final numbers,
and each model file as an artifact by reference (never uploaded) to a file that outlives the run:
its copy in the repository's DVC cache, or the file itself in the repository; a queued
experiment's model that is not in the cache gets no reference (its temporary folder goes away)."""

import json
import os
from pathlib import Path

from _stage import Stage, in_temporary_copy, log, main_of

from suptickets import dvcfiles
from suptickets.artifacts import file_md5, load_tensors, model_files, read_json, state_from_file, write_text
from suptickets.comparison import is_ticket, percent
from suptickets.errors import MissingInput

HISTORIES = ["dense", "sparse_baseline", "warmup", "tickets"]
FIGURES, SUMMARY, EXPORT = Path("plots"), Path("reports/summary.md"), Path("metrics/export.json")


def masks(path: Path) -> dict:
    return state_from_file(load_tensors(path))[1]


def dvc_cache() -> Path:
    """The DVC cache this checkout uses (a queued experiment's temporary copy: the repository's)."""
    from dvc.config import Config

    return Path(Config(dvc_dir=".dvc")["cache"].get("dir") or ".dvc/cache").resolve()


def object_path(md5: str) -> str:
    """Where DVC 3 keeps the file with this md5, inside a cache or a remote."""
    return f"files/md5/{md5[:2]}/{md5[2:]}"


def default_remote() -> str | None:
    """The URL of the default DVC remote (None without one), read from the repository's own config
    (DVC_ROOT: a queued experiment's temporary copy would resolve a relative folder remote wrongly)."""
    from dvc.config import Config

    config = Config(dvc_dir=str(Path(os.environ.get("DVC_ROOT") or ".") / ".dvc"))
    name = config["core"].get("remote")
    url = config["remote"].get(name, {}).get("url") if name else None
    return str(url) if url else None


def remote_object(remote: str | None, md5: str) -> str | None:
    """Where `make push` puts the file with this md5 in `remote` (see `default_remote`; None without
    one): what a colleague can fetch, checked by the md5 beside it."""
    return f"{remote.rstrip('/')}/{object_path(md5)}" if remote else None


def cached_file(cache: Path, md5: str) -> Path:
    return cache / object_path(md5)


def reference(path: Path, md5: str, cache: Path, temporary: bool) -> Path | None:
    """What a W&B reference to the model file `path` should point at: its copy in the DVC cache,
    else the file itself unless this run is in a temporary copy that is deleted after it."""
    cached = cached_file(cache, md5)
    if cached.is_file():
        return cached
    return None if temporary else path.resolve()


def dvc_hashes(path: Path, lock: dict, cache: Path) -> dict:
    """What dvc.lock says about the output holding `path` (a file out, or a folder out such as
    models/tickets, whose per-file hashes come from the .dir listing in the local DVC cache)."""
    md5 = file_md5(path)
    meta = {"md5": md5, "size": path.stat().st_size}
    for out in (o for s in lock.get("stages", {}).values() for o in s.get("outs", [])):
        if out["path"] == path.as_posix():
            return {**meta, "dvc_out": out["path"], "dvc_md5": out.get("md5"), "dvc_lock_matches": out.get("md5") == md5}
        if path.as_posix().startswith(out["path"].rstrip("/") + "/"):
            meta.update({"dvc_out": out["path"], "dvc_md5": out.get("md5")})
            digest = str(out.get("md5", ""))
            listing = cached_file(cache, digest)
            if digest.endswith(".dir") and listing.is_file():
                rel = path.as_posix()[len(out["path"].rstrip("/")) + 1:]
                entry = next((e for e in json.loads(listing.read_text()) if e.get("relpath") == rel), None)
                meta["dvc_lock_matches"] = entry is not None and entry.get("md5") == md5
            return meta
    return meta


def run(s: Stage) -> None:
    from suptickets import report
    from suptickets.figures import plot_export_size

    cfg = s.cfg
    histories = {n: report.read_history(f"plots/{n}.csv") for n in HISTORIES}
    evaluate = read_json("metrics/evaluate.json")
    files = model_files()
    tickets = [masks(p) for n, p in files.items() if is_ticket(n)]
    if "warmup" not in files or "superposed" not in files or not tickets:
        raise MissingInput("models/: the report needs warmup.safetensors, tickets/ticket_*.safetensors "
                                "and superposed.safetensors")
    per_step = report.lr_per_step(cfg, histories["warmup"], histories["tickets"])
    for line in report.lr_mismatches(per_step, [histories["warmup"], histories["tickets"]]):
        log.info(f"report: warning: the rebuilt lr differs from the logged one at {line}")
    figures = report.write_figures(cfg, histories, evaluate,
                                   {"warmup": masks(files["warmup"]), "tickets": tickets,
                                    "superposed": masks(files["superposed"])}, FIGURES)
    text = report.summary_markdown(cfg, evaluate, figures, base=SUMMARY.parent)
    text += "\n" + report.landscape_markdown(FIGURES / report.LANDSCAPE_FIGURE, base=SUMMARY.parent)
    if EXPORT.is_file():  # a chain of stages without export has none
        export = read_json(EXPORT)
        figures["export_size"] = plot_export_size(export, FIGURES / "export_size.png")
        text += "\n" + report.export_markdown(export, figures["export_size"], base=SUMMARY.parent)
    write_text(SUMMARY, text)

    rows = report.evaluation_rows(evaluate)
    final = {f"test_acc.{r['model']}": r["test_acc"] for r in rows}
    final.update({f"density.{r['model']}": r["density"] for r in rows if r["density"] is not None})
    final.update({f"gain_pts.{k}": percent(v) for k, v in evaluate.get("gain", {}).items()})  # points, as people read
    acc = evaluate["test_acc"]
    if "superposed" in acc and "sparse_baseline" in acc:
        final["superposed_beats_sparse_baseline"] = acc["superposed"] > acc["sparse_baseline"]
    wb = s.run.wandb_run  # None when tracking is off
    if wb is not None:
        lock = dvcfiles.lock()
        by_model = {r["model"]: r for r in rows}
        cache, remote = dvc_cache(), default_remote()
        temporary = in_temporary_copy()
        models = []
        for n, p in files.items():
            meta = dvc_hashes(p, lock, cache)
            ref = reference(p, meta["md5"], cache, temporary)
            if ref is None:
                log.warning(f"report: {p} is not in the DVC cache and this temporary experiment folder goes "
                            f"away: no W&B reference for it")
                continue
            models.append({"name": n, "path": ref, "file_name": p.name,
                           "metadata": {**meta, "path": p.as_posix(),
                                        "dvc_remote_object": remote_object(remote, meta["md5"]),
                                        "test_acc": by_model.get(n, {}).get("test_acc"),
                                        "density": by_model.get(n, {}).get("density")}})
        report.log_to_wandb(wb, rows, figures, final, models)
    log.info(f"report: {SUMMARY} and {', '.join(str(p) for p in figures.values())}")
    log.info(f"report: {report.verdict(evaluate, cfg['seed'])}")


if __name__ == "__main__":
    main_of("report", run)
