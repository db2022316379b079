"""Copy third-party CSS from installed packages into assets/vendor/ (git-ignored)."""
from __future__ import annotations

import shutil
from pathlib import Path

from xstatic.pkg import bootstrap

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / "assets" / "vendor"


def main() -> None:
    DEST.mkdir(parents=True, exist_ok=True)
    src = Path(bootstrap.BASE_DIR) / "css" / "bootstrap.min.css"
    shutil.copyfile(src, DEST / "bootstrap.min.css")
    print(f"vendored Bootstrap {bootstrap.VERSION} CSS into {DEST.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
