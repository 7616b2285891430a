"""What the landing scans remember, without Dagster: readiness, a bounded cursor, grouping into runs."""

import os

from harmonizer_dagster.core.landing import Ignored, Landed, ScanState, group_runs, run_key, scan_folder


def step(state: ScanState, listing, ignored=(), left=()):
    scan = state.advance(listing, ignored)
    return scan, scan.finish(left)


def test_a_file_is_ready_on_its_second_unchanged_look_and_never_again():
    state = ScanState()
    files = [Landed("a.csv", "1:10", 10), Landed("b.csv", "1:11", 11)]
    scan, state = step(state, files)
    assert scan.ready == []
    scan, state = step(state, files)
    assert [item.key for item in scan.ready] == ["a.csv", "b.csv"]
    for _ in range(2):
        scan, state = step(ScanState.parse(state.dump()), files)
        assert scan.ready == []
    rewritten = [files[0], Landed("b.csv", "2:20", 20)]
    _, state = step(state, rewritten)
    scan, state = step(state, rewritten)
    assert [item.key for item in scan.ready] == ["b.csv"], "a rewrite is new content"


def test_the_cursor_stays_small_and_every_file_is_handled_once_whatever_the_number():
    files = [Landed(f"folder/a rather long file name number {n:06d}.csv", f"3:{n}", n) for n in range(20_000)]
    state, handled, largest = ScanState(), [], 0
    for _ in range(50):
        scan, state = step(state, files)
        handled += [item.key for item in scan.ready]
        largest = max(largest, len(state.dump()))
        if len(handled) == len(files):
            break
    assert sorted(handled) == sorted(item.key for item in files), "each file once, none lost"
    assert largest <= 100_000 and len(state.dump()) < 100, (largest, state.dump())
    assert step(state, files)[0].ready == []


def test_files_left_by_a_tick_stay_ready_and_hold_the_mark_back():
    files = [Landed("old.csv", "1:1", 1), Landed("new.csv", "1:2", 2)]
    _, state = step(ScanState(), files)
    scan, state = step(state, files, left=[files[0]])
    assert [item.key for item in scan.ready] == ["old.csv", "new.csv"]
    assert state.mark == 1
    scan, state = step(state, files)
    assert [item.key for item in scan.ready] == ["old.csv"], "the handled newer file is not ready again"


def test_ignored_names_are_reported_once_even_while_they_keep_changing():
    reported = []
    state = ScanState()
    for change in range(1, 5):
        growing = [Ignored(".upload.part", "hidden", change)]
        scan, state = step(state, [Landed("a.csv", "1:1", 1)], growing)
        reported += [item.key for item in scan.reported]
    assert reported == [".upload.part"]


def test_a_folder_listing_since_a_mark_skips_older_files_but_not_preserved_mtime_copies(tmp_path):
    folder = tmp_path / "src" / "sub"
    folder.mkdir(parents=True)
    (folder / "old.csv").write_text("a\n")
    [old] = scan_folder(tmp_path, "src")
    assert old.key == "sub/old.csv"
    assert scan_folder(tmp_path, "src", since=old.changed + 1) == []
    (folder / "copy.csv").write_text("b\n")
    os.utime(folder / "copy.csv", ns=(0, 0))  # as cp -p keeps an old modification time
    assert [item.key for item in scan_folder(tmp_path, "src", since=old.changed + 1)] == ["sub/copy.csv"]


def test_runs_are_bounded_by_count_and_bytes_and_a_big_file_runs_alone():
    sizes = [10, 10, 10, 10, 500, 10]
    groups = group_runs(list(enumerate(sizes)), lambda pair: pair[1], max_files=3, max_bytes=100)
    assert [[n for n, _ in group] for group in groups] == [[0, 1, 2], [3], [4], [5]]


def test_run_keys_depend_on_the_bytes_not_the_names_nor_their_order():
    assert run_key(["h1"]) == "h1"
    assert run_key(["h1", "h2"]) == run_key(["h2", "h1"]) != run_key(["h1", "h3"])
