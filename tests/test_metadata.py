import pytest

from pneumocam.data import Judge, normalise, read_metadata_csv


@pytest.mark.parametrize(("field", "raw", "value", "malformed"), [
    ("age", "045Y", "45", False), ("age", "45", "45", False), ("age", "006M", "0", False),
    ("age", "155", "", True), ("age", "4 5", "", True), ("age", "", "", False),
    ("sex", "F", "F", False), ("sex", "male", "M", False), ("sex", "O", "", True),
    ("view", "pa", "PA", False), ("view", "AP", "AP", False), ("view", "A P?", "", True),
])
def test_values_are_normalised_or_left_empty_and_counted(field, raw, value, malformed):
    assert normalise(field, raw) == (value, malformed)


def test_judge_counts_known_and_malformed_values(tmp_path):
    (tmp_path / "metadata.csv").write_text("patientId,PatientAge,PatientSex\na,155,F\nb,60,M\n")
    table = read_metadata_csv(tmp_path / "metadata.csv")
    judge = Judge()
    assert [judge(table[p]) for p in ("a", "b")] == [{"sex": "F", "age": "", "view": "", "finding": ""},
                                                     {"sex": "M", "age": "60", "view": "", "finding": ""}]
    assert judge.summary() == {"known": {"sex": 2, "age": 1, "view": 0, "finding": 0},
                               "malformed": {"sex": 0, "age": 1, "view": 0, "finding": 0}}


def test_rsna_detailed_classes_become_the_finding_column(tmp_path):
    from pneumocam.data import read_source_metadata

    (tmp_path / "metadata.csv").write_text("patientId,ViewPosition\na,PA\nb,AP\n")
    (tmp_path / "stage_2_detailed_class_info.csv").write_text(
        "patientId,class\na,No Lung Opacity / Not Normal\nb,Lung Opacity\nc,Normal\nd,Something else\n")
    table = read_source_metadata(tmp_path)
    judge = Judge()
    assert [judge(table[p])["finding"] for p in "abcd"] == ["not-normal", "opacity", "normal", ""]
    assert judge(table["a"])["view"] == "PA"
    assert judge.summary()["malformed"]["finding"] == 1


def test_a_views_csv_gives_each_patient_its_normalised_view_and_names_the_file_when_it_has_none(tmp_path):
    from pneumocam.data import read_views
    from pneumocam.errors import PneumocamError

    (tmp_path / "metadata.csv").write_text("patientId,ViewPosition,PatientSex\na,pa,F\nb,AP,M\nc,,F\nd,A P?,M\n")
    assert read_views(tmp_path / "metadata.csv") == {"a": "PA", "b": "AP"}  # empty and malformed: unknown
    (tmp_path / "sexes.csv").write_text("patientId,PatientSex\na,F\n")
    with pytest.raises(PneumocamError, match=r"sexes\.csv: needs a view column \(ViewPosition or view\)"):
        read_views(tmp_path / "sexes.csv")
    (tmp_path / "header.csv").write_text("patientId,PatientSex\n")  # no rows: still told it has no view column
    with pytest.raises(PneumocamError, match=r"header\.csv: needs a view column"):
        read_views(tmp_path / "header.csv")
    (tmp_path / "empty.csv").write_text("patientId,view\n")  # a view column and no rows: nothing known, no error
    assert read_views(tmp_path / "empty.csv") == {}
    with pytest.raises(PneumocamError, match=r"missing\.csv: no such file"):
        read_views(tmp_path / "missing.csv")
