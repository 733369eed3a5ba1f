#!/usr/bin/python3
"""Regenerates the seed corpora in tests/fuzz/corpus/ (committed; run from anywhere).

    /usr/bin/python3 tests/fuzz/make_corpus.py

corpus/fuzz_npy:    .npy files written by numpy (every dtype ncml reads, 0-D to 3-D, format
                    versions 1.0, 2.0 and 3.0) and ones ncml refuses (Fortran order,
                    big-endian, bool, float16, truncated, trailing bytes, forged shapes).
corpus/fuzz_idx:    a first byte for the mode of fuzz_idx.cpp (0 memory, 1 file as is,
                    2 gzip-compressed by the harness), then IDX bytes: heads of the bundled
                    data/*.gz files, re-headed to a few items, plain and gzip, and corrupt
                    ones.
corpus/fuzz_inputs: one seed per entry point of fuzz_inputs.cpp (the layout is described
                    there), plus a few with special values and bad labels.
"""
import gzip
import io
import os
import random
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def npy_bytes(a, version=None):
    b = io.BytesIO()
    if version is None:
        np.save(b, a)
    else:
        np.lib.format.write_array(b, a, version=version)
    return b.getvalue()


def npy_raw(header, payload, major=1):
    """A .npy file with a verbatim header dict (padded like numpy) and payload."""
    pre = 10 if major == 1 else 12
    h = header + " " * ((64 - (pre + len(header) + 1) % 64) % 64) + "\n"
    length = struct.pack("<H", len(h)) if major == 1 else struct.pack("<I", len(h))
    return b"\x93NUMPY" + bytes([major, 0]) + length + h.encode("ascii") + payload


def npy_corpus():
    rng = np.random.default_rng(7)
    f4 = rng.standard_normal((3, 4)).astype("<f4")
    put("fuzz_npy", "f4_3x4.npy", npy_bytes(f4))
    put("fuzz_npy", "f8_2x3.npy", npy_bytes(rng.standard_normal((2, 3))))
    put("fuzz_npy", "f4_special.npy",
        npy_bytes(np.array([[np.nan, np.inf], [-np.inf, 3.4e38], [1e-45, -0.0]], dtype="<f4")))
    put("fuzz_npy", "i8_5.npy", npy_bytes(np.array([0, 1, 2, -1, 2**40], dtype="<i8")))
    put("fuzz_npy", "i4_4.npy", npy_bytes(np.array([3, 0, 2, 1], dtype="<i4")))
    put("fuzz_npy", "u1_6.npy", npy_bytes(np.arange(6, dtype="u1")))
    put("fuzz_npy", "i8_2x2.npy", npy_bytes(np.array([[1, 2], [3, 2**35]], dtype="<i8")))
    put("fuzz_npy", "f4_0x4.npy", npy_bytes(np.zeros((0, 4), dtype="<f4")))
    put("fuzz_npy", "f8_scalar.npy", npy_bytes(np.float64(2.5)))
    put("fuzz_npy", "f4_2x2x2.npy", npy_bytes(np.zeros((2, 2, 2), dtype="<f4")))
    put("fuzz_npy", "f4_v2.npy", npy_bytes(f4[:2], version=(2, 0)))
    put("fuzz_npy", "i8_v3.npy", npy_bytes(np.arange(3, dtype="<i8"), version=(3, 0)))
    # Refused by ncml.
    put("fuzz_npy", "fortran.npy", npy_bytes(np.asfortranarray(f4)))
    put("fuzz_npy", "big_endian.npy", npy_bytes(f4[:1].astype(">f4")))
    put("fuzz_npy", "bool.npy", npy_bytes(np.array([True, False])))
    put("fuzz_npy", "f2.npy", npy_bytes(np.ones(3, dtype="<f2")))
    whole = npy_bytes(f4)
    put("fuzz_npy", "truncated_payload.npy", whole[:-5])
    put("fuzz_npy", "truncated_header.npy", whole[:40])
    put("fuzz_npy", "trailing.npy", whole + npy_bytes(np.arange(2, dtype="<i4")))
    put("fuzz_npy", "huge_shape.npy",
        npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776), }", b"\0" * 16))
    put("fuzz_npy", "big_shape.npy",
        npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904,), }", b"\0" * 8))
    put("fuzz_npy", "zero_and_huge.npy",
        npy_raw("{'descr': '<i8', 'fortran_order': False, 'shape': (0, 9223372036854775807), }", b""))
    put("fuzz_npy", "keys_reordered.npy",
        npy_raw("{\"shape\": (2,), \"fortran_order\": False, \"descr\": \"|u1\"}", b"\x01\x02", major=2))
    put("fuzz_npy", "python2_long.npy",
        npy_raw("{'descr': '<i4', 'fortran_order': False, 'shape': (2L,), }", b"\1\0\0\0\2\0\0\0"))


def idx_bytes(shape, payload):
    return b"\0\0\x08" + bytes([len(shape)]) + b"".join(struct.pack(">I", s) for s in shape) + payload


def idx_corpus():
    def head(name, items):
        with gzip.open(os.path.join(ROOT, "data", name), "rb") as f:
            raw = f.read()
        dims = raw[3]
        shape = list(struct.unpack(">" + "I" * dims, raw[4:4 + 4 * dims]))
        item = 1
        for s in shape[1:]:
            item *= s
        shape[0] = items
        start = 4 + 4 * dims
        return idx_bytes(shape, raw[start:start + items * item])

    labels = head("mnist-labels-idx1-ubyte.gz", 24)
    images = head("mnist-images-idx3-ubyte.gz", 2)
    alphabets = head("omniglot-alphabets-idx1-ubyte.gz", 16)
    for mode in (0, 1, 2):
        put("fuzz_idx", "mnist_labels_%d.idx" % mode, bytes([mode]) + labels)
    put("fuzz_idx", "mnist_images_0.idx", b"\0" + images)
    put("fuzz_idx", "mnist_images_2.idx", b"\2" + images)
    put("fuzz_idx", "omniglot_alphabets_1.idx", b"\1" + alphabets)
    put("fuzz_idx", "mnist_labels_gz_1.idx", b"\1" + gzip.compress(labels, mtime=0))
    put("fuzz_idx", "mnist_images_gz_1.idx", b"\1" + gzip.compress(images, mtime=0))
    gz = gzip.compress(labels, mtime=0)
    put("fuzz_idx", "truncated_gz_1.idx", b"\1" + gz[:len(gz) // 2])
    corrupt = bytearray(gz)
    corrupt[len(corrupt) // 2] ^= 0xff
    put("fuzz_idx", "corrupt_gz_1.idx", b"\1" + bytes(corrupt))
    put("fuzz_idx", "bad_magic_0.idx", b"\0" + b"\1\0\x08\1" + labels[4:])
    put("fuzz_idx", "float_type_0.idx", b"\0" + b"\0\0\x0d\1\0\0\0\1" + b"\0" * 4)
    put("fuzz_idx", "rank0_0.idx", b"\0" + b"\0\0\x08\0")
    put("fuzz_idx", "rank9_0.idx", b"\0" + b"\0\0\x08\x09" + b"\0\0\0\1" * 9 + b"\0")
    put("fuzz_idx", "huge_dims_2.idx", b"\2" + idx_bytes([0xffffffff, 0xffffffff, 0xffffffff], b"\0" * 8))
    put("fuzz_idx", "short_payload_0.idx", b"\0" + idx_bytes([10, 2], b"\0" * 19))
    put("fuzz_idx", "zero_items_1.idx", b"\1" + idx_bytes([0, 0xffffffff], b""))


# fuzz_inputs.cpp header layout: op, N, D, C, flags, k, seed (4 bytes), scale, label mode,
# then 4-byte patches (target, position low, position high, value).
NUM_OPS = 15


def inputs_corpus():
    rng = random.Random(11)
    for op in range(NUM_OPS):
        head = bytes([op, 24, 5, 3, rng.randrange(256), 5]) + struct.pack("<I", 1000 + op) + bytes([0, 0])
        put("fuzz_inputs", "op%02d_plain" % op, head)
        patches = bytes()
        for _ in range(3):
            patches += bytes([rng.randrange(4), rng.randrange(256), 0, rng.randrange(256)])
        head2 = bytes([op, 40, 3, 4, rng.randrange(256), 2]) + struct.pack("<I", 77 + op) + bytes([op % 6, op % 4])
        put("fuzz_inputs", "op%02d_patched" % op, head2 + patches)
    # Special cases: empty data, one class, one dimension, k beyond the gallery, NaN at (0, 0).
    put("fuzz_inputs", "empty", bytes([0, 0, 4, 3, 0, 1]) + b"\1\0\0\0\0\0")
    put("fuzz_inputs", "one_class", bytes([5, 10, 4, 0, 0, 1]) + b"\2\0\0\0\0\0")
    put("fuzz_inputs", "one_dim", bytes([8, 10, 1, 3, 0, 3]) + b"\3\0\0\0\0\0")
    put("fuzz_inputs", "k_over", bytes([8, 10, 4, 3, 0, 40]) + b"\4\0\0\0\0\0")
    put("fuzz_inputs", "nan", bytes([13, 10, 4, 3, 0, 3]) + b"\5\0\0\0\0\0" + bytes([0, 0, 0, 0]))
    put("fuzz_inputs", "near_max", bytes([1, 30, 4, 3, 0, 3]) + b"\6\0\0\0\7\0")
    put("fuzz_inputs", "near_max_knn", bytes([8, 30, 4, 3, 0x01, 3]) + b"\6\0\0\0\7\0")
    put("fuzz_inputs", "near_max_double", bytes([0, 30, 4, 3, 0x80, 3]) + b"\6\0\0\0\7\0")
    put("fuzz_inputs", "denormal", bytes([9, 30, 4, 3, 0, 3]) + b"\7\0\0\0\3\0")
    put("fuzz_inputs", "bad_label", bytes([2, 12, 4, 3, 0, 3]) + b"\x08\0\0\0\0\3" + bytes([1, 5, 0, 200]))


def main():
    npy_corpus()
    idx_corpus()
    inputs_corpus()


if __name__ == "__main__":
    main()
