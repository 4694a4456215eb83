from imgsynth.imageset import ImageSet


def test_data_import_digits_cli_writes_train_and_test(tmp_path, run_cli):
    code, out, err = run_cli("data", "import", "digits", tmp_path / "d", "--size", "12", "--seed", "3")
    assert code == 0, err
    train, test = ImageSet.open(tmp_path / "d" / "train"), ImageSet.open(tmp_path / "d" / "test")
    assert len(train) + len(test) == 1797
    assert train.image_size == (12, 12)
    assert train.id[:12] in out


def test_missing_set_is_a_clear_error(tmp_path, run_cli):
    code, _, err = run_cli("data", "info", tmp_path / "nope")
    assert code == 2
    assert str(tmp_path / "nope") in err and "no such ImageSet" in err
