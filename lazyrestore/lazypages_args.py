"""`lazyrestore lazy-pages`, a drop-in for `criu lazy-pages`: CRIU's arguments, as zdtm and runtimes give them,
translated into lr-lazyd's (CRIU's page server as --criu-page-server, the dump indexed first if it is not)."""

from __future__ import annotations

from pathlib import Path

from . import address as addresses
from . import dumpindex, manifest
from .errors import UsageError


CRIU_TLS_OPTIONS = ("--tls", "--tls-cacert", "--tls-cacrl", "--tls-cert", "--tls-key", "--tls-no-cn-verify")


def refuse_criu_tls(args: list[str]) -> None:
    """CRIU's TLS page-server options: lr-lazyd does not speak TLS to CRIU's page server. Refused (UsageError, exit
    2) before anything is indexed or started."""
    given = [a.partition("=")[0] for a in args if a.partition("=")[0] in CRIU_TLS_OPTIONS]
    if given:
        raise UsageError(f"lazy-pages {given[0]}: TLS to CRIU's page server is not supported; for an "
                         "authenticated link use lazyrestore's own page server (`lazyrestore serve` on the source, "
                         "`lazyrestore restore --from` on the destination), or CRIU's own `criu lazy-pages --tls`")


def criu_common_args(args: list[str]) -> list[str]:
    """CRIU's options every `criu ACTION` takes, as zdtm and runtimes give them to `criu lazy-pages`:
    --no-default-config dropped (lr-lazyd reads no CRIU config file), --verbosity[=N] is lr-lazyd's --verbose."""
    out = []
    for a in args:
        key, eq, val = a.partition("=")
        if a == "--no-default-config":
            continue
        out.append(f"--verbose{eq}{val}" if key == "--verbosity" else a)
    return out


def criu_lazy_pages_args(args: list[str]) -> list[str]:
    """`lazyrestore lazy-pages` with CRIU's `--page-server --address A --port P` (a drop-in for `criu lazy-pages
    --page-server`): lr-lazyd's --criu-page-server A:P, the dump indexed first if it is not. Other args as given,
    but for CRIU's common options (criu_common_args). CRIU's --tls options are refused first."""
    refuse_criu_tls(args)
    args = criu_common_args(args)
    if "--page-server" not in args:
        return args
    out, address, port, images = [], "", "", "."
    it = iter(args)
    for a in it:
        key, eq, val = a.partition("=")
        if key in ("--address", "--port", "-D", "--images-dir") and not eq:
            val = next(it, "")
        if key == "--address":
            address = val
        elif key == "--port":
            port = val
        elif a != "--page-server":
            out += [a] if eq or key not in ("-D", "--images-dir") else [a, val]
            images = val if key in ("-D", "--images-dir") else images
    if not address or not port.isdigit():
        raise UsageError("lazy-pages --page-server needs --address ADDR and --port PORT (CRIU's page server; "
                         "PORT from 1 to 65535)")
    try:  # before the dump is indexed: nothing is written for a bad address
        addresses.check_destination(addresses.join(address, int(port)))
    except UsageError as exc:
        raise UsageError(f"lazy-pages --address {address!r} --port {port!r}: {exc}") from None
    images_dir = Path(images)
    if not (images_dir / manifest.META_DIR / manifest.INDEX_NAME).exists():
        dumpindex.index_lazy_dump(images_dir)
    return out + ["--criu-page-server", f"{address}:{port}"]
