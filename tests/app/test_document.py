"""Document: strokes, selections and version changes undo exactly and cheaply; an edit carries a
mask snapshot; results become versions whose parent is the version the job started from."""

import numpy as np
import pytest

from app.document import Document
from app.mask import TILE
from engine.protocol import Edit, Failed, Finished, ImageResult, Progress, TextDelta


def make(height=400, width=600, sent=None):
    image = np.zeros((height, width, 3), np.uint8)
    return Document(image, (sent if sent is not None else []).append, path="/tmp/photo.png")


def test_new_document_has_one_version_and_an_empty_mask():
    doc = make()
    assert doc.title == "photo.png"
    assert [v.id for v in doc.versions] == ["v1"] and doc.current == doc.viewed == "v1"
    assert doc.mask.shape == (400, 600) and not doc.mask.any()
    assert doc.image.shape == (400, 600, 3) and not doc.can_undo


def test_bad_image_is_refused_with_a_sentence():
    with pytest.raises(ValueError, match="uint8"):
        Document(np.zeros((4, 4), np.float32), [].append)


def test_150_strokes_undo_and_redo_exactly_with_small_undo_memory():
    """A 24-MP photo: 150 strokes, all undone then all redone, mask identical at each end."""
    doc = Document(np.zeros((4000, 6000, 3), np.uint8), [].append)
    rng = np.random.default_rng(1)
    states = [doc.mask.coverage.copy()]
    for i in range(150):
        erase = i % 7 == 6  # every seventh stroke erases along the one before
        if not erase:
            x, y = rng.uniform(0, 6000), rng.uniform(0, 4000)
        points = [(x + 40 * k, y + 25 * np.sin(k)) for k in range(8)]
        doc.paint_line(points, radius=rng.uniform(5, 60), hardness=0.6, erase=erase)
        if i in (0, 74, 149):
            states.append(doc.mask.coverage.copy())
    full_mask = doc.mask.coverage.nbytes
    assert len(doc.history) == 150
    assert doc.history.nbytes < 3 * full_mask  # 150 full masks would be 50x more
    for _ in range(150):
        doc.undo()
    assert np.array_equal(doc.mask.coverage, states[0]) and not doc.can_undo
    for _ in range(150):
        doc.redo()
    assert np.array_equal(doc.mask.coverage, states[-1]) and not doc.can_redo
    for _ in range(75):
        doc.undo()
    assert np.array_equal(doc.mask.coverage, states[2])


def test_stroke_emits_dirty_rects_inside_the_image():
    doc = make()
    rects = []
    doc.mask_changed.connect(lambda *r: rects.append(r))
    doc.paint_line([(10, 10), (200, 10), (200, 300)], radius=6)
    assert rects
    for x, y, w, h in rects:
        assert 0 <= x and 0 <= y and x + w <= 600 and y + h <= 400
    assert doc.mask.as_bool()[10, 10:200].all() and doc.mask.as_bool()[10:300, 200].all()


def test_edit_with_mask_sends_a_snapshot_that_later_painting_leaves_alone():
    sent = []
    doc = make(sent=sent)
    doc.paint_line([(100, 100), (150, 100)], radius=10)
    expected = doc.mask.as_bool()
    request = doc.edit("make it red", seed=7)
    assert sent == [request] and isinstance(request, Edit)
    assert request.instruction == "make it red" and request.seed == 7
    assert request.image is doc.current_version.image
    assert np.array_equal(request.mask, expected)
    doc.paint_line([(300, 300), (400, 300)], radius=30)
    doc.fill_mask()
    assert np.array_equal(request.mask, expected)
    assert request.job_id in doc.jobs


def test_edit_without_mask_is_global_and_empty_instruction_is_refused():
    sent = []
    doc = make(sent=sent)
    assert doc.edit("sepia").mask is None
    assert doc.edit("   ") is None and "instruction" in doc.error
    assert len(sent) == 1


def test_soft_edge_counts_from_half_coverage():
    doc = make()
    doc.paint_line([(300, 200)], radius=40, hardness=0.0)
    snapshot = doc.mask_snapshot()
    assert snapshot[200, 300] and not snapshot[200, 300 + 39]
    assert snapshot.sum() == (doc.mask.coverage >= 128).sum()


def test_refused_submit_keeps_the_document_and_says_why():
    def refuse(request):
        raise RuntimeError("The engine has stopped.")

    doc = Document(np.zeros((8, 8, 3), np.uint8), refuse)
    assert doc.edit("x") is None
    assert doc.error == "The engine has stopped." and not doc.jobs


def test_result_becomes_current_version_with_its_parent_and_undo_returns():
    sent = []
    doc = make(sent=sent)
    progress, finished = [], []
    doc.progress_changed.connect(progress.append)
    doc.job_finished.connect(finished.append)
    request = doc.edit("add a moon")
    job = request.job_id
    assert doc.handle(Progress(job, "tokens", 2, 8))
    assert doc.jobs[job].progress.step == 2 and progress == [job]
    doc.handle(TextDelta(job, "Thinking"))
    assert doc.jobs[job].thinking == "Thinking"
    result = np.full((400, 600, 3), 9, np.uint8)
    doc.handle(ImageResult(job, result, {"seed": "3"}))
    doc.handle(Finished(job))
    assert finished == [job] and job not in doc.jobs
    new = doc.versions[-1]
    assert new.parent == "v1" and new.job_id == job and new.metadata == {"seed": "3"}
    assert doc.current == doc.viewed == new.id and doc.image[0, 0, 0] == 9
    assert new.thinking == "Thinking"
    doc.undo()
    assert doc.current == "v1" and doc.image[0, 0, 0] == 0 and len(doc.versions) == 2
    doc.redo()
    assert doc.current == new.id


def test_events_of_other_jobs_are_not_taken():
    doc = make()
    assert not doc.handle(Progress("someone-else", "tokens", 1, 2))


def test_failure_sets_the_error_and_cancel_does_not():
    doc = make()
    first, second = doc.edit("a").job_id, doc.edit("b").job_id
    doc.handle(Failed(first, "Out of memory; try a smaller image.", "out_of_memory"))
    assert doc.error == "Out of memory; try a smaller image." and first not in doc.jobs
    doc.set_error("")
    doc.handle(Failed(second, "Cancelled.", "cancelled"))
    assert doc.error == "" and not doc.jobs


def add_result(doc, value):
    job = doc.edit(f"value {value}").job_id
    doc.handle(ImageResult(job, np.full((400, 600, 3), value, np.uint8), {}))
    doc.handle(Finished(job))
    return doc.versions[-1].id


def test_view_make_current_delete_star_and_their_undo():
    doc = make()
    second = add_result(doc, 2)
    third = add_result(doc, 3)
    assert doc.version(third).parent == second
    doc.view_version("v1")
    assert doc.viewed == "v1" and doc.current == third and doc.image[0, 0, 0] == 0
    doc.make_current(second)
    assert doc.current == doc.viewed == second
    doc.undo()
    assert doc.current == third
    doc.delete_version(third)
    assert [v.id for v in doc.versions] == ["v1", second] and doc.current == second
    doc.undo()
    assert [v.id for v in doc.versions] == ["v1", second, third] and doc.current == third
    doc.redo()
    assert doc.version(third) is None
    doc.star_version(second)
    assert doc.version(second).starred
    doc.delete_version("v1")
    doc.delete_version(second)
    assert len(doc.versions) == 1 and "at least one version" in doc.error


def test_mask_and_version_steps_share_one_history():
    doc = make()
    doc.paint_line([(10, 10), (50, 10)], radius=5)
    painted = doc.mask.coverage.copy()
    second = add_result(doc, 5)
    doc.paint_line([(10, 100), (50, 100)], radius=5)
    doc.undo()
    assert np.array_equal(doc.mask.coverage, painted) and doc.current == second
    doc.undo()
    assert doc.current == "v1" and np.array_equal(doc.mask.coverage, painted)
    doc.undo()
    assert not doc.mask.any()


def test_result_of_another_size_gets_its_own_mask_and_undo_brings_the_old_back():
    doc = make()
    doc.paint_line([(10, 10)], radius=5)
    job = doc.edit("crop").job_id
    doc.handle(ImageResult(job, np.zeros((200, 300, 3), np.uint8), {}))
    assert doc.mask.shape == (200, 300) and not doc.mask.any()
    doc.undo()
    assert doc.mask.shape == (400, 600) and doc.mask.coverage[10, 10] == 255


def test_selections_add_and_subtract():
    doc = make()
    doc.select_rect(10, 20, 110, 70)
    assert doc.mask.as_bool().sum() == 100 * 50 and doc.mask.as_bool()[20:70, 10:110].all()
    doc.select_rect(50, 0, 60, 400, subtract=True)
    assert doc.mask.as_bool().sum() == 90 * 50 and not doc.mask.as_bool()[:, 50:60].any()
    doc.select_lasso([(200, 200), (300, 200), (300, 300), (200, 300)])
    assert doc.mask.as_bool()[200:300, 200:300].all()
    doc.select_lasso([(250, 250), (400, 250), (250, 400)], subtract=True)
    assert not doc.mask.as_bool()[251, 251] and doc.mask.as_bool()[201, 201]
    for _ in range(4):
        doc.undo()
    assert not doc.mask.any()


def test_invert_clear_fill_with_undo():
    doc = make()
    doc.select_rect(0, 0, 100, 100)
    doc.invert_mask()
    assert not doc.mask.as_bool()[:100, :100].any() and doc.mask.as_bool()[100:, :].all()
    doc.clear_mask()
    assert not doc.mask.any()
    doc.fill_mask()
    assert doc.mask.as_bool().all()
    assert doc.history.nbytes < TILE * TILE  # whole-mask changes of uniform tiles stay tiny
    doc.undo()
    doc.undo()
    doc.undo()
    assert doc.mask.as_bool()[:100, :100].all() and doc.mask.as_bool().sum() == 100 * 100
    doc.clear_mask()
    doc.clear_mask()  # nothing left to clear: no extra step
    doc.undo()
    assert doc.mask.as_bool().sum() == 100 * 100


def test_restore_puts_back_versions_mask_and_numbering():
    from app.document import Version

    doc = make()
    image = np.full((400, 600, 3), 4, np.uint8)
    versions = [
        Version("v1", doc.image, {}, None, None),
        Version("v7", image, {"seed": "1"}, "v1", "j"),
    ]
    coverage = np.zeros((400, 600), np.uint8)
    coverage[5:9, 5:9] = 200
    changed = []
    doc.mask_changed.connect(lambda *r: changed.append(r))
    doc.paint_line([(100, 100)], radius=5)
    doc.restore(versions, "v7", "v1", coverage)
    assert doc.current == "v7" and doc.viewed == "v1" and doc.image[0, 0, 0] == 0
    assert np.array_equal(doc.mask.coverage, coverage) and changed[-1] == (0, 0, 600, 400)
    assert not doc.can_undo
    assert add_result(doc, 1) == "v8"
    with pytest.raises(ValueError):
        doc.restore(versions, "v3", "v1")


def test_whole_mask_actions_report_what_to_repaint():
    doc = make()
    rects = []
    doc.mask_changed.connect(lambda *r: rects.append(r))
    doc.fill_mask()
    assert rects == [(0, 0, 600, 400)]
    doc.select_rect(10, 10, 20, 20, subtract=True)
    assert rects[-1] == (0, 0, 256, 256)  # the tile it touched
    doc.clear_mask()
    doc.clear_mask()  # nothing changed: nothing to repaint
    assert len(rects) == 3


def test_grow_and_shrink_by_a_disc_with_undo():
    doc = make()
    doc.select_rect(100, 100, 101, 101)  # one pixel at (100, 100)
    doc.grow_mask(10)
    ys, xs = np.nonzero(doc.mask.as_bool())
    assert np.hypot(xs - 100, ys - 100).max() <= 10 and doc.mask.as_bool()[100, 90:111].all()
    assert len(xs) == sum(1 for y in range(-10, 11) for x in range(-10, 11) if x * x + y * y <= 100)
    doc.grow_mask(-4)
    ys, xs = np.nonzero(doc.mask.as_bool())
    assert np.hypot(xs - 100, ys - 100).max() < 6.5 and doc.mask.as_bool()[100, 94:107].all()
    doc.undo()
    doc.undo()
    assert doc.mask.as_bool().sum() == 1


def test_shrink_keeps_a_mask_at_the_image_border():
    doc = make()
    doc.select_rect(0, 0, 50, 400)  # a strip along the left edge
    doc.grow_mask(-5)
    inside = doc.mask.as_bool()
    assert inside[200, 0:45].all() and not inside[200, 45:].any()
    assert inside[0, 10] and inside[399, 10]  # top and bottom edges are the image's: kept
