"""Descriptions: how true they are on held-out scenes, and what the text costs.

    python bench/describe.py truth --spie out/spie --checkpoint CKPT --subset s2-l1c-berlin
    python bench/describe.py loso --config model/training/configs/text-loso.yaml \\
        --spie out/spie --holdout s2-l1c-berlin --holdout l7-raleigh --out out/loso-text
    python bench/describe.py cost --checkpoint model/weights/default
    python bench/describe.py textfree --checkpoint CKPT --spie out/spie --subset s2-l1c-berlin

``truth``: the figures of :func:`model.training.describe_eval.evaluate_descriptions` for
one checkpoint on the given subsets (every split of them; a held-out scene's samples).

``loso``: leave-one-scene-out for the text side. For every ``--holdout`` data set, the
config's run is trained (with the existing staged training) on the SPIE train splits
of every *other* data set of the store, into ``<out>/<holdout>``, and its descriptions
are then checked on every sample of the held-out set. Prints one JSON line per held-out
set and a table.

``textfree``: the mask path SPEX does not ship (no generation: a template response forced
in one pass), against the shipped one: time per sample and how the masks change.

``cost``: the extraction job on the bundled Sentinel-2 sample with ``--describe`` and
``--no-describe`` (alternating, ``--reps`` each, medians reported), in one run: seconds
per tile (whole job, inside the extractor, and in the finalise-time check), the ratio of
the two jobs, and whether the mask and probability COGs are byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
SCENE = REPO / "samples" / "s2_l1c_berlin_20170216.tif"


def _settings(args: argparse.Namespace):
    """Decoding settings from --decoding/--ngram, or None (the checkpoint's own)."""
    if args.decoding == "greedy" and args.ngram is None:
        return None
    from model.checkpoint import read_config
    from model.llm import GenerationSettings

    cfg = read_config(args.checkpoint)
    if args.decoding == "paper":
        base = GenerationSettings.paper(cfg.max_new_tokens)
    else:
        base = GenerationSettings.for_model(cfg)
    return base if args.ngram is None else replace(base, no_repeat_ngram_size=args.ngram)


def _headline(result: dict) -> dict:
    ref, own = result["reference"], result["own_mask"]
    return {
        "samples": result["samples"],
        "share_true_reference": ref["share_true"],
        "share_true_own_mask": own["share_true"],
        "target_named": ref["target_named_share"],
        "with_repeats": ref["descriptions_with_repeats"],
        "passed_reference": ref["descriptions_passed"],
        "statements_reference": ref["statements_true"] + ref["statements_false"],
        "distinct_texts": result["distinct_texts"],
        "distinct_signatures": result["distinct_signatures"],
        "identical_text_for_differing_tiles": result["identical_text_for_differing_tiles"],
    }


def cmd_truth(args: argparse.Namespace) -> None:
    from model.training.describe_eval import evaluate_descriptions

    result = evaluate_descriptions(
        args.spie, args.checkpoint, subsets=args.subset, settings=_settings(args)
    )
    if args.rows:
        Path(args.rows).write_text(json.dumps(result, indent=1))
    for row in result["rows"][: args.show]:
        print(f"# {row['target']:<10} {row['text']}")
    print(json.dumps({**_headline(result), "kinds_reference": result["kinds_reference"]}))


def cmd_loso(args: argparse.Namespace) -> None:
    import torch

    from model.training.config import load_config
    from model.training.describe_eval import evaluate_descriptions
    from model.training.stages import final_model, train
    from pipeline.spie.store import SpieStore

    everything = sorted(SpieStore(args.spie).manifest()["subsets"])
    table = []
    for holdout in args.holdout:
        others = tuple(s for s in everything if s != holdout)
        cfg = load_config(args.config, spie=args.spie, out=str(Path(args.out) / holdout))
        cfg = replace(cfg, subsets=others)
        start = time.perf_counter()
        train(cfg)
        seconds = time.perf_counter() - start
        torch.set_num_threads(cfg.threads)
        ckpt = final_model(cfg)
        args.checkpoint = str(ckpt)
        result = evaluate_descriptions(args.spie, ckpt, subsets=[holdout], settings=_settings(args))
        Path(cfg.out, "describe_eval.json").write_text(json.dumps(result, indent=1))
        line = {"holdout": holdout, "trained_on": list(others), "train_s": round(seconds, 1)}
        line |= _headline(result)
        line["kinds_reference"] = result["kinds_reference"]
        print(json.dumps(line), flush=True)
        table.append(line)
    print(f"{'held out':<18}{'true (ref)':>11}{'true (own)':>11}{'target':>8}{'repeats':>8}")
    for t in table:
        own = t["share_true_own_mask"]
        print(
            f"{t['holdout']:<18}{t['share_true_reference']:>11.3f}"
            f"{(own if own is not None else float('nan')):>11.3f}"
            f"{t['target_named']:>8.3f}{t['with_repeats']:>8d}"
        )


def _sha(path: str | None) -> str | None:
    if path is None:
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cmd_cost(args: argparse.Namespace) -> None:
    import torch

    from model.inference import SpexExtractor
    from pipeline.extract import ExtractionSettings, run_extraction
    from pipeline.scene import open_scene
    from pipeline.tiling import plan_tiles

    if args.threads:
        torch.set_num_threads(args.threads)
    import pipeline.extract as extract_module

    extractor_s: dict[str, float] = {}
    original = SpexExtractor.predict
    original_check = extract_module.check_descriptions

    def timed(self, batch, timings=None):
        start = time.perf_counter()
        try:
            return original(self, batch, timings)
        finally:
            extractor_s["s"] = extractor_s.get("s", 0.0) + time.perf_counter() - start

    def timed_check(*a, **k):
        start = time.perf_counter()
        try:
            return original_check(*a, **k)
        finally:
            extractor_s["check"] = extractor_s.get("check", 0.0) + time.perf_counter() - start

    runs: dict[bool, list[dict]] = {True: [], False: []}
    SpexExtractor.predict = timed  # type: ignore[method-assign]
    extract_module.check_descriptions = timed_check
    try:
        for _ in range(args.reps):
            for describe in (True, False):
                out = tempfile.mkdtemp(prefix="bench-describe-")
                settings = ExtractionSettings(
                    target=args.target,
                    model=args.checkpoint,
                    tile=args.tile,
                    overlap=args.overlap,
                    formats=("cog", "prob"),
                    describe=describe,
                )
                extractor_s.clear()
                try:
                    start = time.perf_counter()
                    paths = run_extraction(str(SCENE), settings, out)
                    job = time.perf_counter() - start
                    report = json.loads(Path(paths["report"]).read_text())
                    runs[describe].append(
                        {
                            "job_s": job,
                            "extractor_s": extractor_s.get("s", 0.0),
                            "check_s": extractor_s.get("check", 0.0),
                            "mask_sha256": _sha(paths["mask"]),
                            "prob_sha256": _sha(paths["probability"]),
                            "descriptions": len(report["descriptions"]),
                        }
                    )
                finally:
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        SpexExtractor.predict = original  # type: ignore[method-assign]
        extract_module.check_descriptions = original_check

    def median_run(rs: list[dict]) -> dict:
        out = {k: statistics.median(r[k] for r in rs) for k in ("job_s", "extractor_s", "check_s")}
        out |= {k: rs[-1][k] for k in ("mask_sha256", "prob_sha256", "descriptions")}
        out["same_bytes_every_run"] = len({(r["mask_sha256"], r["prob_sha256"]) for r in rs}) == 1
        return out

    on, off = median_run(runs[True]), median_run(runs[False])
    scene = open_scene(str(SCENE))
    n = len(plan_tiles(scene.sizes["y"], scene.sizes["x"], args.tile, args.overlap))
    print(
        json.dumps(
            {
                "tiles": n,
                "describe_job_per_tile_s": round(on["job_s"] / n, 4),
                "no_describe_job_per_tile_s": round(off["job_s"] / n, 4),
                "describe_extractor_per_tile_s": round(on["extractor_s"] / n, 4),
                "no_describe_extractor_per_tile_s": round(off["extractor_s"] / n, 4),
                "check_per_tile_s": round(on["check_s"] / n, 4),
                "job_ratio_no_describe_over_describe": round(off["job_s"] / on["job_s"], 4),
                "reps": args.reps,
                "mask_identical": on["mask_sha256"] == off["mask_sha256"],
                "probability_identical": on["prob_sha256"] == off["prob_sha256"],
                "deterministic": on["same_bytes_every_run"] and off["same_bytes_every_run"],
                "descriptions": [on["descriptions"], off["descriptions"]],
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


def cmd_textfree(args: argparse.Namespace) -> None:
    """The mask path SPEX does not ship, measured: instead of generating the description
    (prefill + one decoding step per token), force the grounded writer's description of
    the APG's coarse mask (cut to the token budget) as the response in the prefill pass
    and decode the mask from its hidden states. Per sample of the given subsets: seconds
    of each path, and pooled IoU of each path's mask (>= 0.5) against the reference and
    against the other path's."""
    import numpy as np
    import torch

    from model.checkpoint import load_checkpoint
    from model.inference import letterbox, unletterbox
    from model.msam import visual_tokens
    from model.training.data import SpieIndex, subset_sensor, to_model_input, truncate_responses
    from pipeline.apg import run_apg
    from pipeline.mask_codes import MASK_NODATA, MASK_TARGET
    from pipeline.spie.facts import sample_facts
    from pipeline.spie.responses import GroundedWriter

    torch.set_num_threads(args.threads or 1)
    model = load_checkpoint(args.checkpoint).eval()
    cfg = model.config
    index = SpieIndex(args.spie, subsets=args.subset)
    counts = {k: np.zeros(3) for k in ("gen", "forced", "between")}  # inter, union, n
    seconds = {"gen": 0.0, "forced": 0.0}
    for row in index.rows:
        have = index.bands[row["subset"]]
        image, mask = index.image(row), index.mask(row)
        valid = np.isfinite(image).all(axis=0)
        apg = run_apg(image, have, row["target"], valid=valid, sensor=subset_sensor(row["subset"]))
        coarse = sample_facts(apg.mask, image, have, row["target"])
        response = GroundedWriter().write(coarse, key=row["sample_id"])
        (response,) = truncate_responses([response], model.llm.tokenizer, cfg.max_new_tokens)
        aligned = np.stack([image[list(have).index(b)] for b in cfg.bands])
        x, _ = to_model_input(aligned, None, cfg.input_size)
        x = x[None]
        targets = [row["target"]]
        with torch.no_grad():
            start = time.perf_counter()
            pred = model.infer(x, [apg.instruction], targets=targets)
            seconds["gen"] += time.perf_counter() - start
            start = time.perf_counter()
            maps, fused = model.encode_maps(x)
            prompt = model.llm.pack(
                visual_tokens(fused, cfg.visual_token_budget),
                [apg.instruction],
                cfg.system_prompt,
                [response],
            )
            hidden, _ = model.llm.hidden_states(
                prompt.embeds, prompt.attention_mask, prompt.position_ids
            )
            logits = model.decode_mask(
                maps, fused, hidden, prompt.response_mask, cfg.input_size, targets
            )
            seconds["forced"] += time.perf_counter() - start
        h, w = mask.shape
        _, content = letterbox(torch.zeros(1, 1, h, w), cfg.input_size)
        gen, forced = (
            (torch.sigmoid(unletterbox(lg.float(), content, (h, w)))[0].numpy() >= 0.5) & valid
            for lg in (pred.mask_logits, logits)
        )
        labelled = mask != MASK_NODATA
        truth = mask == MASK_TARGET
        for key, a, b in (
            ("gen", gen, truth),
            ("forced", forced, truth),
            ("between", gen, forced),
        ):
            sel = labelled if key != "between" else valid
            counts[key] += [(a & b & sel).sum(), ((a | b) & sel).sum(), 1]
    n = len(index.rows)
    iou = {k: round(float(v[0] / max(v[1], 1)), 4) for k, v in counts.items()}
    print(
        json.dumps(
            {
                "samples": n,
                "generate_s_per_sample": round(seconds["gen"] / n, 4),
                "forced_s_per_sample": round(seconds["forced"] / n, 4),
                "iou_generated_vs_reference": iou["gen"],
                "iou_forced_vs_reference": iou["forced"],
                "iou_generated_vs_forced": iou["between"],
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("truth", "loso"):
        p = sub.add_parser(name)
        p.add_argument("--spie", required=True)
        p.add_argument("--decoding", choices=("greedy", "paper"), default="greedy")
        p.add_argument("--ngram", type=int, default=None, help="override n-gram blocking")
        if name == "truth":
            p.add_argument("--checkpoint", required=True)
            p.add_argument("--subset", action="append", required=True)
            p.add_argument("--rows", help="write every sample's text and check here")
            p.add_argument("--show", type=int, default=8, help="print this many texts")
        else:
            p.add_argument("--config", required=True)
            p.add_argument("--holdout", action="append", required=True)
            p.add_argument("--out", required=True)
    p = sub.add_parser("cost")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--target", default="water")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p = sub.add_parser("textfree")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--spie", required=True)
    p.add_argument("--subset", action="append", required=True)
    p.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    commands = {"truth": cmd_truth, "loso": cmd_loso, "cost": cmd_cost, "textfree": cmd_textfree}
    commands[args.command](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
