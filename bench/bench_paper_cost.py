"""Cost cards of the experiments' paper presets, measured on this machine (issue 16).

Reads each experiment's presets from its notebook (cfx_nb.experiment.experiment_from_notebook) and prints the
projected wall hours, GPU-hours and disk per stage at the real dataset's size (cfx_nb.cost). Meant for a GPU:

    python bench/bench_paper_cost.py --device cuda --out bench/results/paper_cost_h200.json
"""
import argparse
import json
from pathlib import Path

import torch

from cfx_nb.experiment import experiment_from_notebook
from cfx_nb.spurious import spurious_cost_card

CARDS = {"05_waterbirds": ("waterbirds", 2), "06_spuco_animals": ("spuco_dogs", 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--notebooks", nargs="+", default=list(CARDS))
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    res = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and a.device != "cpu" else "cpu",
           "torch": torch.__version__, "cards": {}}
    for nb in a.notebooks:
        exp = experiment_from_notebook(Path("nbs") / f"{nb}.ipynb")
        ds, k = CARDS[nb]
        card = spurious_cost_card(exp, a.preset, ds, k, a.device)
        print(f"== {nb} ({a.preset}) on {card.attrs['device']}\n{card.round(4).to_string()}", flush=True)
        res["cards"][nb] = json.loads(card.to_json(orient="records"))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
