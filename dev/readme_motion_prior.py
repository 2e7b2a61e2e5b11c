"""Regenerate the README's motion-prior results tables from a results JSON.

    python dev/readme_motion_prior.py [RESULTS_JSON]   # default policy/results/motion_prior.json

Writes, between the markers `<!-- motion-prior-results -->` and `<!-- /motion-prior-results -->`
of README.md, one table per regime (every variant landed: success with its 95 % Wilson interval,
the seeds, success per task) and one table of the paired differences against `none`, `scratch`
and `lamp`; run from the repository root."""
import json
import sys

BEGIN, END = "<!-- motion-prior-results -->", "<!-- /motion-prior-results -->"
DESCRIPTION = {
    "scratch": "`scratch` (no stage 1)",
    "none": "`none` (stage-1 VL encoder, no motion features)",
    "lamp": "`lamp` (stage 1 on our 3D labels + gated cross-attention)",
    "lamp_gt": "`lamp_gt` (as lamp, stage 1 on the simulator's true motion)",
    "lamp_2d": "`lamp_2d` (as lamp, our 2D tracks)",
    "motion_image": "`motion_image` (none + a motion-image head)",
    "action_prior": "`action_prior` (stage 1 on the corpus's actions alone)",
    "lafp": "`lafp` (latent-action flow policy + decoder, interpolation 0.5)",
    "lafp_no_interp": "`lafp_no_interp` (as lafp, no interpolation)",
    "lamp_rate": "`lamp_rate` (as lamp, labels with the rate-aware depth-jump limit)",
}
TASKS = ["button-press-topdown-v3", "coffee-button-v3", "drawer-open-v3", "window-open-v3"]


def variant_rows(variants: dict, regime: str) -> list[str]:
    rows = [f"| variant @ {regime} demos | seeds | success (95 % Wilson) | per seed | "
            + " | ".join(t.removesuffix("-v3") for t in TASKS) + " |",
            "|---|---|---|---|" + "---|" * len(TASKS)]
    for key, v in variants.items():
        name, reg = key.split("@")
        if reg != regime:
            continue
        lo, hi = v["ci95"]
        per_seed = ", ".join(f"{s['successes']}" for s in v.get("per_seed", {}).values())
        rows.append(f"| {DESCRIPTION.get(name, name)} | {', '.join(map(str, v['seeds']))} | "
                    f"{v['successes']}/{v['trials']} = {v['successes'] / v['trials']:.2f} [{lo:.2f}, {hi:.2f}] | {per_seed} | "
                    + " | ".join(f"{v['per_task'][t]['successes']}/{v['per_task'][t]['trials']}" for t in TASKS) + " |")
    return rows


def paired_rows(paired: dict, regime: str) -> list[str]:
    rows = [f"| difference @ {regime} demos | diff | paired 95 % interval | seeds |", "|---|---|---|---|"]
    for key, v in paired.items():
        pair, reg = key.rsplit("@", 1)
        if reg != regime:
            continue
        lo, hi = v["ci95"]
        strong = lo > 0 or hi < 0
        diff = f"**{v['diff']:+.3f}**" if strong else f"{v['diff']:+.3f}"
        rows.append(f"| `{pair}` | {diff} | [{lo:+.3f}, {hi:+.3f}] | {', '.join(map(str, v.get('seeds', [])))} |")
    return rows


def main() -> None:
    d = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "policy/results/motion_prior.json"))
    regimes = sorted({k.split("@")[1] for k in d["variants"]}, key=int)
    parts = []
    for regime in regimes:
        parts += variant_rows(d["variants"], regime) + [""] + paired_rows(d["paired"], regime) + [""]
    s = open("README.md").read()
    i, j = s.index(BEGIN) + len(BEGIN), s.index(END)
    open("README.md", "w").write(s[:i] + "\n" + "\n".join(parts) + s[j:])


if __name__ == "__main__":
    main()
