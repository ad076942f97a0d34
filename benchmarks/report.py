"""Writes docs/results.md from the JSON records in benchmarks/results/: every table of results.

    python benchmarks/report.py [--results benchmarks/results] [--out docs/results.md]
    python benchmarks/report.py --check    # exit 1 when docs/results.md is not what it writes

Nothing here is typed by hand: each table is computed from the records (means and spreads
over seeds, per-digit and per-defect-type figures), and each names the commits, dates and
machines of the records it was made from.
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED_ANOGAN = {"deep_svdd": (.966, .992, .850, .887, .894, .883, .947, .935, .849, .924),
                    "cheng_2020": (.990, .998, .888, .913, .944, .912, .925, .964, .883, .958)}
"""Published AnoGAN ROC AUC per MNIST digit: Deep SVDD's table (Ruff et al. 2018) and Cheng et
al. 2020's."""
DECLARED_MNIST, RULE_MNIST = "wgan_gp_e50_E2500", "wgan_gp_e50_rule"
"""The declared MNIST row (E's length fixed at 2,500 steps), and the same flags with E's
stopping rule."""
MNIST_TABLES = (
    (DECLARED_MNIST, "b_izif", ("Recommended mode: WGAN-GP, 50 epochs, E at least 2,500 "
     "steps, one pass from E(x), izi_f score")),
    ("wgan_gp_e50", "b_izif", "The same GAN flags with E's earlier default length (3 epochs)"),
    ("dcgan_e5", "b_izif", "The original's DCGAN, 5 epochs (the first declared mode)"),
)
TEXTURE_SCORES = ("roc_auc", "pixel_roc_auc", "pro_auc")
CHOOSING_CATEGORY = "gravel"


def load(folder):
    """{file stem: record} of the JSON records in ``folder`` (none when it is missing)."""
    return {path.stem: json.loads(path.read_text())
            for path in sorted(Path(folder).glob("*.json"))}


def mean_sd(values):
    """'mean ± sd' of values (the sd over seeds), or the one value."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def provenance(records):
    """One line naming the commits, dates and machines of ``records``."""
    commits = sorted({r.get("commit") or "?" for r in records})
    dates = sorted({r.get("date") or "?" for r in records})
    machines = sorted({r.get("machine") or "?" for r in records})
    span = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    plural = "s" if len(records) != 1 else ""
    return (f"{len(records)} record{plural}; commit{plural} {', '.join(commits)}; {span}; "
            f"{'; '.join(machines)}.")


def health_passed(record):
    """Whether every health check a record holds (the GAN's, the encoder's) passed."""
    checks = [check for check in (record.get("health") or {}).values() if check]
    return bool(checks) and all(check.get("passed") for check in checks)


def mnist_runs(records, prefix, mode):
    """{digit: {seed: record}} of one MNIST mode family's records that hold ``mode``."""
    runs = defaultdict(dict)
    for stem, record in records.items():
        head, _, rest = stem.rpartition("_d")
        if head != prefix or mode not in record:
            continue
        digit, seed = (int(part) for part in rest.replace("s", "").split("_"))
        runs[digit][seed] = record
    return runs


def mnist_table(records, prefix, mode, title):
    """The per-digit seed table of one MNIST mode family, or [] without its records."""
    runs = mnist_runs(records, prefix, mode)
    if not runs:
        return []
    lines = [f"### {title}", "", ("| digit | seeds | ROC AUC per seed | mean ± sd | health "
             "passed | Deep SVDD's / Cheng et al.'s AnoGAN |"), "|---|---|---|---|---|---|"]
    everything = []
    for digit in sorted(runs):
        seeds = sorted(runs[digit])
        values = [runs[digit][s][mode]["roc_auc"] for s in seeds]
        everything += values
        passed = sum(health_passed(runs[digit][s]) for s in seeds)
        lines.append(f"| {digit} | {','.join(map(str, seeds))} | "
                     + " ".join(f"{v:.3f}" for v in values) + f" | {mean_sd(values)} | "
                     f"{passed} of {len(seeds)} | {PUBLISHED_ANOGAN['deep_svdd'][digit]:.3f} / "
                     f"{PUBLISHED_ANOGAN['cheng_2020'][digit]:.3f} |")
    every = [r for digit in runs.values() for r in digit.values()]
    spread = f"sd {statistics.stdev(everything):.3f}; " if len(everything) > 1 else ""
    lines += ["", f"Mean over all {len(everything)} runs: **{statistics.mean(everything):.3f}** "
              f"({spread}lowest {min(everything):.3f}). " + provenance(every), ""]
    return lines


def encoder_rule_table(records, mode="b_izif"):
    """The declared MNIST flags with E's stopping rule beside the declared row (E fixed at
    2,500 steps), run by run at the same digit and seed, or [] without such runs."""
    rule, fixed = mnist_runs(records, RULE_MNIST, mode), mnist_runs(records, DECLARED_MNIST, mode)
    if not rule:
        return []
    lines = ["### The same mode with E's stopping rule", "",
             ("E trains until its held-out residual stops falling (at least 250 steps, at most "
              "10,000), against the declared row's 2,500 fixed steps on the same digit and seed."),
             "", ("| digit | seed | E steps (why it stopped) | ROC AUC | declared row's ROC AUC "
                  "| health |"), "|---|---|---|---|---|---|"]
    every = []
    for digit in sorted(rule):
        for seed, record in sorted(rule[digit].items()):
            every.append(record)
            stop = record.get("encoder_stop") or {}
            declared = fixed.get(digit, {}).get(seed)
            lines.append(
                f"| {digit} | {seed} | {record[mode].get('encoder_steps')}"
                + (f" ({stop['reason']})" if stop.get("reason") else "") + " | "
                f"{record[mode]['roc_auc']:.3f} | "
                f"{cell(declared[mode]['roc_auc'] if declared else None)} | "
                f"{'passed' if health_passed(record) else 'failed'} |")
    return [*lines, "", provenance(every), ""]


def texture_rows(record, combination):
    """The figures of one texture record under a map/score combination (or its own)."""
    figures = record.get(combination, record) if combination else record
    types = figures.get("per_type_roc_auc") or {}
    return ([figures.get(key) for key in TEXTURE_SCORES],
            " ".join(f"{kind} {value:.2f}" for kind, value in sorted(types.items())))


def best_on_choosing(records):
    """The (tag, map_score combination) with the best mean of image and pixel ROC AUC over the
    choosing category's seed-0 patch runs, the declared one (tag None) and its tagged
    rescorings (no label of brick or grass takes part), or None."""
    candidates = {(record.get("tag"), key): value
                  for record in records.values()
                  if record["category"] == CHOOSING_CATEGORY and record["mode"] == "patch"
                  and record["seed"] == 0
                  for key, value in record.items()
                  if isinstance(value, dict) and "pixel_roc_auc" in value}
    if not candidates:
        return None
    return max(candidates, key=lambda key: (candidates[key]["roc_auc"]
                                            + candidates[key]["pixel_roc_auc"]) / 2)


def chosen_flags(chosen, records):
    """main.py's scoring flags of a chosen (tag, combination): the map and the image score,
    and a rescoring's own flags (those after ``--`` in its record's command)."""
    tag, combination = chosen
    residual_map, image_score = combination.split("_", 1)
    extra = next((r["command"].partition(" -- ")[2] for r in records.values()
                  if r["category"] == CHOOSING_CATEGORY and r.get("tag") == tag
                  and " -- " in r.get("command", "")), "")
    return f"`--residual_map {residual_map} --image_score {image_score}" + (
        f" {extra}`, rescored as `{tag}`" if tag else "`")


def cell(value):
    return "-" if value is None else f"{value:.3f}"


def texture_tables(records):
    """The texture photographs' tables: the choosing category, then each measured one."""
    if not records:
        return []
    chosen = best_on_choosing(records)
    lines = ["## Texture photographs", "",
             ("Categories built by `benchmarks/textures.py` from scikit-image's photographs "
             "(40 training images, 40 good and 75 defective test images of 128x128 in five defect "
             "kinds). Image ROC AUC, pixel ROC AUC and PRO (up to a false positive rate of 0.3); "
             "per defect type, image ROC AUC."), ""]
    if chosen is not None:
        lines += [(f"The declared scoring, chosen on {CHOOSING_CATEGORY} (used for nothing else) "
                  f"from every scoring its seed-0 model was given: **{chosen[1]}** "
                  f"({chosen_flags(chosen, records)})."), ""]
    for category in sorted({r["category"] for r in records.values()}):
        mine = {stem: r for stem, r in records.items() if r["category"] == category}
        lines += [f"### {category}" + (" (used only to choose)" if category == CHOOSING_CATEGORY
                                       else ""), "",
                  ("| mode | seed | image ROC AUC | pixel ROC AUC | PRO | per defect type | "
                  "GAN / E steps | seconds |"), "|---|---|---|---|---|---|---|---|"]
        for stem, record in sorted(mine.items()):
            combinations = ([chosen[1]] if chosen and record["mode"] != "mean"
                            and category != CHOOSING_CATEGORY else
                            [k for k, v in record.items() if isinstance(v, dict)
                             and "pixel_roc_auc" in v] or [None])
            for combination in combinations:
                scores, types = texture_rows(record, combination)
                name = (record["mode"] + (f" {record['tag']}" if record.get("tag") else "")
                        + (f" ({combination})" if combination else ""))
                lines.append(f"| {name} | {record['seed']} | "
                             + " | ".join(cell(v) for v in scores)
                             + f" | {types} | {steps_cell(record)} | "
                             f"{record.get('seconds', '-')}"
                             + (" (rescoring only)" if record.get("tag") else "")
                             + (" (cores shared)" if record.get("cores_shared") else "") + " |")
        lines += ["", *declared_means(mine, chosen, category), provenance(list(mine.values())),
                  ""]
    return lines


def steps_cell(record):
    """'GAN steps / E steps (why E stopped), health' of a trained record, or '-'."""
    if not record.get("gan_steps"):
        return "-"
    stop = ((record.get("health") or {}).get("encoder") or {}).get("stopped_by")
    return (f"{record['gan_steps']} / {record.get('encoder_steps')}"
            + (f" ({stop})" if stop else "")
            + f", health {'passed' if health_passed(record) else 'failed'}")


def declared_means(records, chosen, category):
    """The line of the declared patch mode's means over seeds (and its runs), or nothing."""
    if not chosen or category == CHOOSING_CATEGORY:
        return []
    tag, combination = chosen
    runs = [r[combination] for r in records.values()
            if r["mode"] == "patch" and r.get("tag") == tag and combination in r]
    if not runs:
        return []
    images = [r["roc_auc"] for r in runs]
    pixels = [r["pixel_roc_auc"] for r in runs]
    per_type = defaultdict(list)
    for run in runs:
        for kind, value in run["per_type_roc_auc"].items():
            per_type[kind].append(value)
    means = " ".join(f"{kind} {statistics.mean(values):.2f}"
                     for kind, values in sorted(per_type.items()))
    return [(f"Declared patch mode over {len(runs)} seed{'s' if len(runs) > 1 else ''} (every "
             f"run made): image ROC AUC {mean_sd(images)}, pixel ROC AUC {mean_sd(pixels)}; "
             f"per defect type, the mean image ROC AUC: {means}."), ""]


def resize_table(records):
    """The whole-image texture mode on 64x64 brick crops (its declared critic score)."""
    declared = {stem: r for stem, r in records.items() if stem.endswith("_declared_critic")}
    if not declared:
        return []
    lines = ["## The texture mode before patches: 64x64 brick crops", "",
             ("WGAN-GP at half width, 20,000 critic steps, E at least 2,500 steps; image score "
             "`critic`, maps with `--residual_shift 3` (`benchmarks/mvtec_synthetic.py "
             "--photo brick.png --subtle`)."), "",
             "| seed | image ROC AUC | pixel ROC AUC | mean-image baseline, image / pixel |",
             "|---|---|---|---|"]
    images, pixels = [], []
    for stem, record in sorted(declared.items()):
        figures = record["b_shift3_critic"]
        baseline = record.get("mean_image_baseline") or {}
        images.append(figures["roc_auc"])
        pixels.append(figures["pixel_roc_auc"])
        seed = stem.split("_seed")[1].split("_")[0]
        lines.append(f"| {seed} | {figures['roc_auc']:.3f} | {figures['pixel_roc_auc']:.3f} | "
                     f"{cell(baseline.get('roc_auc_top1'))} / "
                     f"{cell(baseline.get('pixel_roc_auc'))} |")
    lines += ["", f"Means: image {mean_sd(images)}, pixel {mean_sd(pixels)}. "
              + provenance(list(declared.values())), ""]
    return lines


def record_table(title, intro, columns, cells, records):
    """A section of one table row per record: ``cells(record)`` gives the cells of
    ``columns``, followed by the record's machine, commit and date; [] without records."""
    if not records:
        return []
    columns = [*columns, "machine", "commit", "date"]
    lines = [f"## {title}", "", *([intro, ""] if intro else []),
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, record in sorted(records.items()):
        lines.append("| " + " | ".join(map(str, [*cells(record), record["machine"],
                                                  record["commit"], record["date"]])) + " |")
    return [*lines, ""]


def quick_start(records):
    """The README's quick start, as measured."""
    return record_table(
        "Quick start", None, ["ROC AUC", "seconds", "encoder steps", "health"],
        lambda r: [f"{r['roc_auc']:.4f}", r["seconds"], r.get("encoder_steps"),
                   "passed" if r.get("health_passed") else "failed"], records)


def small_folder_table(records):
    """The README's folder mode on small folders of real images, per record."""
    return record_table(
        "A small folder of real images",
        ("MNIST training images of one digit written as a user's folder of PNG files, scored on "
         "test images of that digit (normal) and the others (`benchmarks/small_folder.py`): "
         "ROC AUC of the README's folder mode, of the same mode with the summed score, and of "
         "the original search; E's length as its stopping rule chose it."),
        ["digit", "training images", "GAN / E steps (why E stopped)", "recommended",
         "summed score", "original search", "health"],
        lambda r: [r["digit"], r["train_images"],
                   f"{r['gan_steps']} / {r['encoder_steps']}"
                   + (f" ({r['encoder_stop']})" if r.get("encoder_stop") else ""),
                   f"{r['recommended']['roc_auc']:.3f}", f"{r['encoder_sum']['roc_auc']:.3f}",
                   f"{r['original_search']['roc_auc']:.3f}",
                   "passed" if health_passed(r) else "failed"], records)


def speed_table(records):
    """The compiled training step's throughput against the matmul roofline, per record."""
    return record_table(
        "Training speed",
        ("The compiled training step on random images (`benchmarks/train_step.py`): images per "
         "second, the FLOP rate they make (counted from the layer shapes) and its ratio to a "
         "large `tf.matmul` measured in the same process."),
        ["GAN", "images, batch", "G / D width", "steps/s", "images/s", "GFLOP/s",
         "matmul GFLOP/s", "ratio"],
        lambda r: [r["gan"], f"{r['height']}x{r['width']}x{r['channels']}, {r['batch']}",
                   f"{r['gf_dim']} / {r['df_dim']}", r["steps_per_s"], r["images_per_s"],
                   r["gflops"], r["matmul_gflops"], r["roofline_ratio"]], records)


def report(results):
    """docs/results.md's text from the records under ``results``."""
    results = Path(results)
    mnist = {**load(results / "mnist_one_class")}
    lines = ["# Results", "",
             ("Written by `python benchmarks/report.py` from the JSON records in "
             "`benchmarks/results/`; do not edit by hand. How each was measured: "
             "[benchmarks/README.md](../benchmarks/README.md)."), ""]
    lines += quick_start(load(results / "quick_start"))
    lines += ["## One-class MNIST", "",
              ("ROC AUC of 1,000 stratified MNIST test images per run (the normal digit against "
              "the nine others), every run counted."), ""]
    for prefix, mode, title in MNIST_TABLES:
        lines += mnist_table(mnist, prefix, mode, title)
        if prefix == DECLARED_MNIST:
            lines += encoder_rule_table(mnist)
    lines += texture_tables(load(results / "textures"))
    lines += resize_table(load(results / "mvtec_synthetic"))
    lines += small_folder_table(load(results / "small_folder"))
    lines += speed_table(load(results / "train_step"))
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when --out differs from what this writes")
    args = parser.parse_args(argv)
    text = report(args.results)
    out = Path(args.out)
    if args.check:
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            print(f"{out} is not what benchmarks/report.py writes: run it", file=sys.stderr)
            return 1
        return 0
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
