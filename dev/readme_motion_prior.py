"""Regenerate the README's 5-demonstration motion-prior table from a results JSON (default
policy/results/motion_prior.json; run from the repository root after merging the experiment
branch; prints the paired differences)."""
import json, sys
d = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "policy/results/motion_prior.json"))
desc = {"scratch": "`scratch` (no stage 1)", "none": "`none` (stage-1 VL encoder, no motion features)",
        "lamp": "`lamp` (stage 1 + gated cross-attention on the motion)",
        "lamp_gt": "`lamp_gt` (as lamp, stage 1 on the simulator's true motion)",
        "lamp_2d": "`lamp_2d` (as lamp, 2D tracks)"}
tasks = ["button-press-topdown-v3", "coffee-button-v3", "drawer-open-v3", "window-open-v3"]
rows = []
for k, v in d["variants"].items():
    name, regime = k.split("@")
    if regime != "5":
        continue
    lo, hi = v["ci95"]
    seeds = ", ".join(str(x) for x in v.get("seeds", [0]))
    rows.append(f"| {desc.get(name, name)} | {seeds} | {v['successes']}/{v['trials']} = {round(v['successes'] / v['trials'] + 1e-9, 2):.2f} [{lo:.2f}, {hi:.2f}] | "
                + " | ".join(f"{v['per_task'][t]['successes']}/{v['per_task'][t]['trials']}" for t in tasks) + " |")
s = open("README.md").read()
head = "| variant @ 5 demos | seeds | success (95 % Wilson) | button-press-topdown | coffee-button | drawer-open | window-open |\n|---|---|---|---|---|---|---|\n"
old = "| variant @ 5 demos, seed 0 | success (95 % Wilson) | button-press-topdown | coffee-button | drawer-open | window-open |\n|---|---|---|---|---|---|\n"
s = s.replace(old, head)
i = s.index(head) + len(head)
j = s.index("\n\n", i)
s = s[:i] + "\n".join(rows) + s[j:]
open("README.md", "w").write(s)
for k, v in d["paired"].items():
    print(k, v["diff"], v["ci95"])
