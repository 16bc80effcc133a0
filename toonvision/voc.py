"""Pascal VOC XML, as labelImg writes it: read safely into value objects, and write back.

A labelImg file looks like::

    <annotation verified="yes">          (attribute optional)
        <folder>raw</folder>             (optional)
        <filename>shot.png</filename>
        <path>C:\\...\\shot.png</path>     (optional, never trusted)
        <size><width>800</width><height>600</height><depth>3</depth></size>  (optional; may be 0 x 0)
        <object>
            <name>cog_bb_flunky</name>
            <pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>  (optional)
            <bndbox><xmin>152</xmin><ymin>279</ymin><xmax>266</xmax><ymax>423</ymax></bndbox>
        </object>
    </annotation>

Files are untrusted: DTDs, entities and network access are refused before anything expands.
"""

from __future__ import annotations

import logging
import math
import stat
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from lxml import etree

from toonvision.constants import MAX_XML_BYTES
from toonvision.errors import AnnotationError

logger = logging.getLogger(__name__)

_FORBIDDEN_MARKUP = tuple(  # in every encoding libxml2 detects on its own, so UTF-16 cannot hide them
    markup.encode(encoding)
    for markup in ("<!DOCTYPE", "<!ENTITY", "<!doctype", "<!entity")
    for encoding in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
)


@dataclass(frozen=True)
class Box:
    """A bounding box in pixel coordinates, as written in the XML (may be fractional)."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float

    def rounded(self) -> tuple[int, int, int, int]:
        """Integer pixel box (left, top, right, bottom), rounding half up."""
        return tuple(int(math.floor(v + 0.5)) for v in (self.xmin, self.ymin, self.xmax, self.ymax))


@dataclass(frozen=True)
class ImageSize:
    width: int
    height: int
    depth: int = 3


@dataclass(frozen=True)
class VocObject:
    """One labelled object. ``box`` is None when the object has no usable bndbox."""

    name: str
    box: Box | None
    pose: str = "Unspecified"
    truncated: bool = False
    difficult: bool = False


@dataclass(frozen=True)
class Annotation:
    """One labelImg XML file's content."""

    filename: str
    size: ImageSize | None
    objects: tuple[VocObject, ...]
    folder: str | None = None
    path: str | None = None
    verified: bool = False


class WarningKind(str, Enum):
    """What a warning is about, so a reader can filter warnings without matching their text."""

    INCOMPLETE_SIZE = "incomplete size"  # <size> without a numeric width or height
    NO_BOX = "no box"  # an <object> without <bndbox>
    BAD_BOX = "bad box"  # a <bndbox> without a numeric xmin/ymin/xmax/ymax

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class VocWarning:
    """Something odd in a file that does not stop it being read; ``message`` names the file."""

    kind: WarningKind
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ParsedAnnotation:
    """An annotation and what was odd about it (warnings never stop extraction)."""

    annotation: Annotation
    warnings: tuple[VocWarning, ...] = field(default=())


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        load_dtd=False,
        no_network=True,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def load_annotation(path: Path) -> ParsedAnnotation:
    """Read and parse one VOC XML file; every failure names the file."""
    path = Path(path)
    try:
        info = path.stat()
        size = info.st_size
        if not stat.S_ISREG(info.st_mode):
            raise AnnotationError(f"{path}: is not a regular file (a folder, pipe, socket or device); not read")
        if size > MAX_XML_BYTES:
            raise AnnotationError(
                f"{path}: {size} bytes is larger than the {MAX_XML_BYTES}-byte limit for an "
                "annotation; is this really a labelImg file?"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return parse_annotation(data, str(path))


def parse_annotation(data: bytes | str, source: str = "<string>") -> ParsedAnnotation:
    """Parse labelImg XML content; ``source`` names it in messages."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > MAX_XML_BYTES:
        raise AnnotationError(f"{source}: larger than the {MAX_XML_BYTES}-byte annotation limit")
    if any(marker in data for marker in _FORBIDDEN_MARKUP):
        raise AnnotationError(
            f"{source}: contains a DTD or entity declaration, which labelImg never writes; "
            "refusing to read it (it could expand without limit or read other files)"
        )
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        reason = " ".join(str(exc).split())
        raise AnnotationError(f"{source}: not well-formed XML ({reason}); re-save it in labelImg") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise AnnotationError(f"{source}: contains a DTD, which labelImg never writes; refusing to read it")
    if any(isinstance(node, etree._Entity) for node in root.iter()):
        raise AnnotationError(f"{source}: contains entity references; refusing to read it")
    if root.tag != "annotation":
        raise AnnotationError(
            f"{source}: root element is <{root.tag}>, expected <annotation>; is this a Pascal VOC file?"
        )
    return _read_annotation(root, source)


def _read_annotation(root: etree._Element, source: str) -> ParsedAnnotation:
    warnings: list[VocWarning] = []
    filename = _text(root, "filename") or ""
    size = _read_size(root.find("size"), source, warnings)
    objects = tuple(
        _read_object(node, number, source, warnings)
        for number, node in enumerate(root.findall("object"))
    )
    annotation = Annotation(
        filename=filename,
        size=size,
        objects=objects,
        folder=_text(root, "folder"),
        path=_text(root, "path"),
        verified=root.get("verified", "").strip().lower() == "yes",
    )
    return ParsedAnnotation(annotation, tuple(warnings))


def _text(node: etree._Element, tag: str) -> str | None:
    child = node.find(tag)
    if child is None or child.text is None:
        return None
    return child.text.strip()


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _flag(text: str | None) -> bool:
    return (text or "").strip().lower() in ("1", "true", "yes")


def _read_size(node: etree._Element | None, source: str, warnings: list[VocWarning]) -> ImageSize | None:
    if node is None:
        return None
    width, height = _number(_text(node, "width")), _number(_text(node, "height"))
    depth = _number(_text(node, "depth"))
    if width is None or height is None:
        warnings.append(VocWarning(
            WarningKind.INCOMPLETE_SIZE, f"{source}: <size> is incomplete; the image's own size is used"
        ))
        return None
    return ImageSize(int(width), int(height), int(depth) if depth is not None else 3)


def _read_object(node: etree._Element, number: int, source: str, warnings: list[VocWarning]) -> VocObject:
    name = _text(node, "name") or ""
    box = None
    bndbox = node.find("bndbox")
    if bndbox is None:
        warnings.append(VocWarning(
            WarningKind.NO_BOX, f"{source}: object {number} ({name or 'unnamed'}): has no <bndbox>; skipped"
        ))
    else:
        values = [_number(_text(bndbox, tag)) for tag in ("xmin", "ymin", "xmax", "ymax")]
        if any(v is None for v in values):
            warnings.append(VocWarning(
                WarningKind.BAD_BOX, f"{source}: object {number} ({name or 'unnamed'}): <bndbox> lacks a numeric "
                "xmin/ymin/xmax/ymax; skipped",
            ))
        else:
            box = Box(*values)
    return VocObject(
        name=name,
        box=box,
        pose=_text(node, "pose") or "Unspecified",
        truncated=_flag(_text(node, "truncated")),
        difficult=_flag(_text(node, "difficult")),
    )


def format_annotation(annotation: Annotation) -> str:
    """Write an annotation exactly as labelImg does (tab indentation, integer coordinates)."""
    root = etree.Element("annotation")
    if annotation.verified:
        root.set("verified", "yes")
    _sub(root, "folder", annotation.folder or "")
    _sub(root, "filename", annotation.filename)
    _sub(root, "path", annotation.path or annotation.filename)
    source = etree.SubElement(root, "source")
    _sub(source, "database", "Unknown")
    size = annotation.size or ImageSize(0, 0, 3)
    size_node = etree.SubElement(root, "size")
    for tag, value in (("width", size.width), ("height", size.height), ("depth", size.depth)):
        _sub(size_node, tag, str(value))
    _sub(root, "segmented", "0")
    for obj in annotation.objects:
        node = etree.SubElement(root, "object")
        _sub(node, "name", obj.name)
        _sub(node, "pose", obj.pose)
        _sub(node, "truncated", "1" if obj.truncated else "0")
        _sub(node, "difficult", "1" if obj.difficult else "0")
        if obj.box is not None:
            bndbox = etree.SubElement(node, "bndbox")
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box.rounded(), strict=True):
                _sub(bndbox, tag, str(value))
    etree.indent(root, space="\t")
    return etree.tostring(root, encoding="unicode") + "\n"


def _sub(parent: etree._Element, tag: str, text: str) -> None:
    etree.SubElement(parent, tag).text = text
