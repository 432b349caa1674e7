"""How kubectl turns a YAML mapping key into a JSON one (sigs.k8s.io/yaml, ``convertToJSONableObject``):
shared by the catalog's loader and the offline validator, importing neither."""

from __future__ import annotations

import math
import struct


def _float32_key(value: float) -> str:
    """A float mapping key as sigs.k8s.io/yaml makes it a string: Go's shortest ``'g'`` format of the
    value as a float32 (``1.5``, ``100000``, ``1e+06``), ``.inf``/``-.inf``/``.nan`` as YAML writes them."""
    if math.isnan(value):
        return ".nan"
    try:
        as32 = struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:  # beyond float32: Go's conversion gives an infinity
        as32 = math.copysign(math.inf, value)
    if math.isinf(as32):
        return ".inf" if as32 > 0 else "-.inf"
    for precision in range(9):  # the fewest digits that read back as the same float32
        text = f"{as32:.{precision}e}"
        if struct.unpack("<f", struct.pack("<f", float(text)))[0] == as32:
            break
    mantissa, exponent_text = text.split("e")
    sign = "-" if mantissa.startswith("-") else ""
    digits = mantissa.lstrip("-").replace(".", "").rstrip("0") or "0"
    exponent = int(exponent_text)
    if exponent < -4 or exponent >= 6:  # Go's %g switch point when the precision is the shortest
        fraction = f".{digits[1:]}" if len(digits) > 1 else ""
        return f"{sign}{digits[0]}{fraction}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    point = exponent + 1
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    whole = digits[:point].ljust(point, "0")
    return f"{sign}{whole}{'.' + digits[point:] if len(digits) > point else ''}"


def json_key(key: object) -> str | None:
    """A YAML mapping key as kubectl sends it in JSON, ``None`` if kubectl cannot send it.

    kubectl turns YAML into JSON with sigs.k8s.io/yaml (``convertToJSONableObject``), which makes every
    mapping key a string: an int key its decimal digits, a bool key ``true``/``false``, a float key
    Go's shortest float32 form; any other key (null) fails the conversion. So
    ``portLevelMtls: {8080: {mode: DISABLE}}`` reaches the API server as ``{"8080": {...}}``, whatever
    the schema of the map.
    """
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return str(key)
    if isinstance(key, float):
        return _float32_key(key)
    return None
