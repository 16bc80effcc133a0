"""The VOC reader accepts what labelImg and similar tools write, and refuses hostile XML."""

from __future__ import annotations

import pytest

from toonvision.errors import AnnotationError
from toonvision.voc import (
    Annotation,
    Box,
    ImageSize,
    VocObject,
    WarningKind,
    format_annotation,
    load_annotation,
    parse_annotation,
)

LABELIMG = """<annotation>
\t<folder>raw</folder>
\t<filename>shot.png</filename>
\t<path>C:\\Users\\someone\\raw\\shot.png</path>
\t<source>
\t\t<database>Unknown</database>
\t</source>
\t<size>
\t\t<width>800</width>
\t\t<height>600</height>
\t\t<depth>3</depth>
\t</size>
\t<segmented>0</segmented>
\t<object>
\t\t<name>cog_bb_flunky</name>
\t\t<pose>Unspecified</pose>
\t\t<truncated>0</truncated>
\t\t<difficult>1</difficult>
\t\t<bndbox>
\t\t\t<xmin>152</xmin>
\t\t\t<ymin>279</ymin>
\t\t\t<xmax>266</xmax>
\t\t\t<ymax>423</ymax>
\t\t</bndbox>
\t</object>
</annotation>
"""


def test_reads_a_labelimg_file():
    parsed = parse_annotation(LABELIMG, "shot.xml")
    annotation = parsed.annotation
    assert parsed.warnings == ()
    assert annotation.filename == "shot.png"
    assert annotation.size == ImageSize(800, 600, 3)
    assert annotation.objects == (VocObject("cog_bb_flunky", Box(152, 279, 266, 423), "Unspecified", False, True),)


@pytest.mark.parametrize(
    "xml, expected_box",
    [
        ("<annotation><object><name>a</name><bndbox><xmin>1.6</xmin><ymin>2.4</ymin><xmax>10.5</xmax>"
         "<ymax>12</ymax></bndbox></object></annotation>", (2, 2, 11, 12)),
        ('<?xml version="1.0" encoding="utf-8"?>\n<annotation verified="yes"><object><name>  RBC \t</name>'
         "<bndbox><xmin> 3 </xmin><ymin>4</ymin><xmax>5</xmax><ymax>6</ymax></bndbox></object></annotation>",
         (3, 4, 5, 6)),
    ],
    ids=["float coordinates, no optional fields", "declaration, verified attribute, padded text"],
)
def test_accepts_what_real_tools_write(xml, expected_box):
    annotation = parse_annotation(xml, "x.xml").annotation
    assert annotation.objects[0].box.rounded() == expected_box
    assert annotation.objects[0].pose == "Unspecified"
    assert annotation.size is None


def test_verified_attribute_is_kept():
    assert parse_annotation('<annotation verified="yes"></annotation>').annotation.verified


def test_object_without_box_is_kept_with_a_warning():
    parsed = parse_annotation("<annotation><object><name>a</name></object></annotation>", "x.xml")
    assert parsed.annotation.objects[0].box is None
    assert any("no <bndbox>" in w.message and "x.xml" in w.message for w in parsed.warnings)
    assert [w.kind for w in parsed.warnings] == [WarningKind.NO_BOX]


def test_warnings_carry_a_kind_to_filter_on():
    xml = ("<annotation><size><width>8</width></size><object><name>a</name>"
           "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>x</xmax><ymax>4</ymax></bndbox></object></annotation>")
    parsed = parse_annotation(xml, "x.xml")
    assert [w.kind for w in parsed.warnings] == [WarningKind.INCOMPLETE_SIZE, WarningKind.BAD_BOX]
    assert str(parsed.warnings[0]) == "x.xml: <size> is incomplete; the image's own size is used"
    assert "lacks a numeric" in parsed.warnings[1].message


XXE = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<annotation><filename>&x;</filename></annotation>"""

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<annotation><filename>&lol3;</filename></annotation>"""

PARAMETER_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE a [<!ENTITY % p SYSTEM "http://127.0.0.1:1/evil.dtd"> %p;]><annotation/>"""


@pytest.mark.parametrize(
    "xml, message",
    [
        (XXE, "DTD or entity"),
        (BILLION_LAUGHS, "DTD or entity"),
        (PARAMETER_ENTITY, "DTD or entity"),
        ("<annotation><object>", "not well-formed"),
        ("<html><body/></html>", "expected <annotation>"),
        ("", "not well-formed"),
    ],
    ids=["xxe", "billion laughs", "parameter entity", "truncated", "not voc", "empty"],
)
def test_refuses_hostile_or_broken_xml_naming_the_file(xml, message):
    with pytest.raises(AnnotationError, match=message) as info:
        parse_annotation(xml, "evil.xml")
    assert "evil.xml" in str(info.value)
    assert "root:" not in str(info.value)


def test_deep_nesting_is_refused():
    xml = "<annotation>" + "<a>" * 100_000 + "</a>" * 100_000 + "</annotation>"
    with pytest.raises(AnnotationError, match="deep.xml"):
        parse_annotation(xml, "deep.xml")


def test_oversized_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.xml"
    path.write_bytes(b"<annotation>" + b" " * (6 * 1024 * 1024) + b"</annotation>")
    with pytest.raises(AnnotationError, match="huge.xml"):
        load_annotation(path)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(AnnotationError, match="nope.xml"):
        load_annotation(tmp_path / "nope.xml")


def test_format_round_trips_like_labelimg():
    annotation = Annotation(
        filename="s.png", size=ImageSize(320, 240, 3), folder="synth", path="/x/s.png",
        objects=(VocObject("toon_cat", Box(1, 2, 30, 40)), VocObject("cog_lb_bigwig", Box(5, 6, 70, 80))),
    )
    text = format_annotation(annotation)
    assert "\t<filename>s.png</filename>" in text and "<segmented>0</segmented>" in text
    parsed = parse_annotation(text, "s.xml")
    assert parsed.warnings == ()
    assert parsed.annotation == annotation


def test_the_real_labelimg_sample_reads_with_its_two_flunkies(samples):
    annotation = load_annotation(samples / "sample_img1.xml").annotation
    assert [o.name for o in annotation.objects].count("cog_bb_flunky") == 2
