"""Tests of slide inference and the test-time geometry (tools/reference/mfuser_ref/model.py).

The window rule is mmseg's slide mode: per axis ceil((size - crop) / stride) + 1 windows starting at
k * stride, the last ones moved back to end at the border, crops larger than the image clipped.

Run: /usr/bin/python3 -m unittest tests.oracle.test_slide   (MFUSER_SEED=N to repeat a run)
"""

import unittest

if __package__:
    from .seeding import SeededTestCase
else:  # run as a script
    from seeding import SeededTestCase

import torch  # noqa: E402

from mfuser_ref.model import rescale_size, slide_inference, slide_windows  # noqa: E402


def axis_starts(size, crop, stride):
    """Window starts along one axis, written out from the rule rather than from mmseg's loop."""
    if size <= crop:
        return [0]
    n = -(-(size - crop) // stride) + 1                       # ceil((size - crop) / stride) + 1
    return [min(k * stride, size - crop) for k in range(n)]


def axis_count(size, crop, stride):
    """How many windows cover each position along one axis."""
    count = torch.zeros(size)
    for s in axis_starts(size, crop, stride):
        count[s:s + crop] += 1
    return count


def count_map(h, w, crop, stride):
    count = torch.zeros(h, w)
    for y1, y2, x1, x2 in slide_windows(h, w, crop, stride):
        count[y1:y2, x1:x2] += 1
    return count


class TestSlideWindows(SeededTestCase):
    def test_cityscapes_2048x1024(self):
        boxes = slide_windows(1024, 2048, 512, 341)
        self.assertEqual(len(boxes), 18)                      # 3 rows x 6 columns
        self.assertEqual(sorted({b[0] for b in boxes}), [0, 341, 512])
        self.assertEqual(sorted({b[2] for b in boxes}), [0, 341, 682, 1023, 1364, 1536])
        for y1, y2, x1, x2 in boxes:
            self.assertEqual((y2 - y1, x2 - x1), (512, 512))
        count = count_map(1024, 2048, 512, 341)
        self.assertEqual(count.min().item(), 1)
        self.assertEqual(count.max().item(), 4)
        # rows: [0,341) once, [341,853) twice, [853,1024) once
        rows = torch.tensor([1.0] * 341 + [2.0] * 512 + [1.0] * 171)
        # columns: [0,341) 1, [341,512) 2, [512,682) 1, [682,853) 2, [853,1023) 1, [1023,1194) 2,
        #          [1194,1364) 1, [1364,1535) 2, [1535,1536) 1, [1536,1876) 2, [1876,2048) 1
        cols = torch.zeros(2048)
        for a, b, c in ((0, 341, 1), (341, 512, 2), (512, 682, 1), (682, 853, 2), (853, 1023, 1),
                        (1023, 1194, 2), (1194, 1364, 1), (1364, 1535, 2), (1535, 1536, 1),
                        (1536, 1876, 2), (1876, 2048, 1)):
            cols[a:b] = c
        self.assertTrue(torch.equal(count, rows[:, None] * cols[None, :]))

    def test_odd_sizes(self):
        sizes = [(1024, 2048), (720, 1280), (513, 853), (512, 512), (300, 200), (511, 1500), (1000, 517)]
        sizes += [(self.rng.randrange(1, 1400), self.rng.randrange(1, 2600)) for _ in range(6)]
        for h, w in sizes:
            with self.subTest(h=h, w=w):
                boxes = slide_windows(h, w, 512, 341)
                ys, xs = axis_starts(h, 512, 341), axis_starts(w, 512, 341)
                self.assertEqual(len(boxes), len(ys) * len(xs))
                for y1, y2, x1, x2 in boxes:
                    self.assertTrue(0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w)
                    self.assertEqual((y2 - y1, x2 - x1), (min(512, h), min(512, w)))
                count = count_map(h, w, 512, 341)
                self.assertGreaterEqual(count.min().item(), 1)          # every pixel covered
                expected = axis_count(h, 512, 341)[:, None] * axis_count(w, 512, 341)[None, :]
                self.assertTrue(torch.equal(count, expected))

    def test_rectangular_crop_and_stride(self):
        boxes = slide_windows(100, 90, (40, 30), (25, 20))
        ys, xs = axis_starts(100, 40, 25), axis_starts(90, 30, 20)
        self.assertEqual(sorted({(b[0], b[2]) for b in boxes}), sorted((y, x) for y in ys for x in xs))
        for y1, y2, x1, x2 in boxes:
            self.assertEqual((y2 - y1, x2 - x1), (40, 30))


class TestSlideInference(SeededTestCase):
    def test_average_of_overlapping_crops(self):
        """Each window returns its own random constant map; every pixel must get the mean over the
        windows that cover it."""
        h, w, crop, stride, K = 97, 131, 40, 27, 3
        img = torch.randn(2, 3, h, w)
        values = []

        def fake_decode(crop_img):
            v = torch.randn(crop_img.shape[0], K, 1, 1)
            values.append(v)
            return v.expand(-1, -1, *crop_img.shape[-2:])

        out = slide_inference(fake_decode, img, crop, stride, K)
        self.assertEqual(tuple(out.shape), (2, K, h, w))
        total = torch.zeros(2, K, h, w, dtype=torch.float64)
        count = torch.zeros(h, w, dtype=torch.float64)
        for v, (y1, y2, x1, x2) in zip(values, slide_windows(h, w, crop, stride)):
            total[:, :, y1:y2, x1:x2] += v.double()
            count[y1:y2, x1:x2] += 1
        torch.testing.assert_close(out.double(), total / count, rtol=1e-6, atol=1e-6)

    def test_position_dependent_logits_are_reassembled(self):
        """A decoder that reads the crop's pixels back out reproduces the image exactly."""
        img = torch.randn(1, 3, 70, 150)
        out = slide_inference(lambda c: c[:, :2] * 2.0, img, 64, 43, 2)
        torch.testing.assert_close(out, img[:, :2] * 2.0)

    def test_image_smaller_than_crop(self):
        img = torch.randn(1, 3, 30, 50)
        calls = []
        out = slide_inference(lambda c: calls.append(c.shape) or c[:, :1], img, 64, 43, 1)
        self.assertEqual(calls, [torch.Size([1, 3, 30, 50])])
        torch.testing.assert_close(out, img[:, :1])


class TestRescale(unittest.TestCase):
    def test_keep_ratio_sizes(self):
        self.assertEqual(rescale_size(2048, 1024, (2048, 1024)), (2048, 1024))   # Cityscapes: as is
        self.assertEqual(rescale_size(1280, 720, (1280, 720)), (1280, 720))      # BDD: as is
        self.assertEqual(rescale_size(4000, 3000, (2048, 1024)), (1365, 1024))   # short edge binds
        self.assertEqual(rescale_size(1000, 200, (2048, 1024)), (2048, 410))     # long edge binds
        self.assertEqual(rescale_size(1024, 2048, (2048, 1024)), (1024, 2048))   # portrait


if __name__ == "__main__":
    unittest.main()
