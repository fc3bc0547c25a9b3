"""The class vocabulary: 13 classes, lineages in stage order, every alias table, the unknown-label policy."""

import pytest

from wbcvae.errors import InputError
from wbcvae.vocabulary import (
    ALIAS_TABLES,
    CLASSES,
    FREE_TEXT,
    LINEAGES,
    MUNICH_AML_ABBREVIATIONS,
    PBC_PREFIXES,
    TABULA_SAPIENS_ONTOLOGY,
    VANGALEN_CELLTYPES,
    LabelMapper,
    lineages_of,
    normalise_label,
    resolve,
    stage_of,
)


def test_thirteen_snake_case_classes():
    assert len(CLASSES) == 13 == len(set(CLASSES))
    assert all(c == c.lower() and " " not in c for c in CLASSES)
    assert CLASSES[0] == "myeloblast" and CLASSES[-1] == "smudge_cell"


def test_every_class_has_a_lineage_and_granulopoiesis_is_in_stage_order():
    assert {c for lin in LINEAGES.values() for c in lin.stages} == set(CLASSES)
    series = ["myeloblast", "promyelocyte", "myelocyte", "metamyelocyte", "neutrophil_banded", "neutrophil_segmented"]
    assert [stage_of(c, "granulocytic") for c in series] == list(range(6))
    assert LINEAGES["monocytic"].stages == ("myeloblast", "monocyte")
    assert sorted(lineages_of("myeloblast")) == ["granulocytic", "monocytic"]


@pytest.mark.parametrize("table", list(ALIAS_TABLES.values()), ids=list(ALIAS_TABLES))
def test_alias_tables_only_name_canonical_classes(table):
    assert {v for v in table.values() if v is not None} <= set(CLASSES)


def test_pbc_prefixes_cover_ten_classes_and_three_unmapped():
    mapped = {k: v for k, v in PBC_PREFIXES.items() if v}
    assert len(mapped) == 10 and len(set(mapped.values())) == 10
    assert {k for k, v in PBC_PREFIXES.items() if v is None} == {"IG", "NEUTROPHIL", "PLATELET"}
    assert resolve("BNE", ("pbc",)) == "neutrophil_banded"
    assert resolve("SNE", ("pbc",)) == "neutrophil_segmented"


def test_munich_abbreviations_cover_all_fifteen_onto_thirteen():
    assert len(MUNICH_AML_ABBREVIATIONS) == 15
    assert set(MUNICH_AML_ABBREVIATIONS.values()) == set(CLASSES)
    assert resolve("KSC", ("munich_aml",)) == "smudge_cell"
    assert resolve("MOB", ("munich_aml",)) == "myeloblast"
    assert resolve("LYA", ("munich_aml",)) == "lymphocyte_atypical"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Band neutrophils", "neutrophil_banded"),
        ("Segmented neutrophils", "neutrophil_segmented"),
        ("Blast, no lineage spec", "myeloblast"),
        ("Lymphocyte, variant", "lymphocyte_atypical"),
        ("Smudge cells", "smudge_cell"),
        ("Monocytes", "monocyte"),
        ("Erythroblasts", "erythroblast"),
        ("neutrophil_banded", "neutrophil_banded"),
        ("Lymphocyte typical", "lymphocyte_typical"),
        ("Platelets", None),
        ("Neutrophils", None),
    ],
)
def test_free_text_folder_names(text, expected):
    assert resolve(text) == expected


def test_free_text_keys_are_already_normalised():
    assert all(normalise_label(k) == k for k in FREE_TEXT)


@pytest.mark.parametrize(
    "cell_type, expected",
    [("HSC", "myeloblast"), ("Prog", "myeloblast"), ("Mono", "monocyte"), ("lateEry", "erythroblast"),
     ("GMP-like", "promyelocyte"), ("HSC-like", "myeloblast"), ("pDC", None), ("cDC-like", None)],
)
def test_vangalen_cell_types(cell_type, expected):
    assert resolve(cell_type, ("vangalen",)) == expected
    assert cell_type in VANGALEN_CELLTYPES or cell_type.endswith("-like")


@pytest.mark.parametrize(
    "ontology, expected",
    [("neutrophil", "neutrophil_segmented"), ("classical monocyte", "monocyte"),
     ("hematopoietic stem cell", "myeloblast"), ("common myeloid progenitor", "myeloblast"),
     ("CD8-positive, alpha-beta T cell", "lymphocyte_typical"), ("erythrocyte", None)],
)
def test_tabula_sapiens_ontology(ontology, expected):
    assert resolve(ontology, ("tabula_sapiens",)) == expected
    assert normalise_label(ontology) in {normalise_label(k) for k in TABULA_SAPIENS_ONTOLOGY}


def test_same_label_means_different_things_per_source_table():
    # "neutrophil" is a mature segmented cell in Tabula Sapiens but ambiguous as a smear folder name.
    assert resolve("neutrophil", ("tabula_sapiens",)) == "neutrophil_segmented"
    assert resolve("neutrophil", ("free_text",)) is None


def test_skip_policy_counts_unknown_labels():
    mapper = LabelMapper(tables=("pbc",), unknown="skip")
    got = [mapper(x) for x in ["BA", "IG", "IG", "PLATELET", "MO"]]
    assert got == ["basophil", None, None, None, "monocyte"]
    assert mapper.skipped == {"IG": 2, "PLATELET": 1}


def test_fail_policy_names_the_label_and_where():
    mapper = LabelMapper(unknown="fail")
    with pytest.raises(InputError, match=r"'Megakaryocyte' \(cells/Megakaryocyte/x.png\)"):
        mapper("Megakaryocyte", where="cells/Megakaryocyte/x.png")


def test_bad_policy_or_table_is_an_input_error():
    with pytest.raises(InputError, match="policy"):
        LabelMapper(unknown="ignore")
    with pytest.raises(InputError, match="'nope'"):
        LabelMapper(tables=("nope",))
