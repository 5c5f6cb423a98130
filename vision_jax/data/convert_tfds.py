"""Adds ArrayRecord files to a tfds dataset prepared as TFRecord, so the `tfds` source can read it
by index:

    python -m vision_jax.data.convert_tfds --dataset=cifar10 --data_dir=~/tensorflow_datasets

Each TFRecord shard is copied record for record (the serialized examples are not decoded) to an
ArrayRecord shard of the same name beside it, and dataset_info.json then lists array_record as
an alternative format; the TFRecord files stay, so tf.data readers of the dataset still work.
An interrupted conversion leaves no half-written shard and resumes where it stopped when rerun.

tfds has its own converter (`tfds convert_format`), but its command line needs apache-beam, which
tensorflow-datasets does not install.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import tensorflow as tf

from vision_jax.errors import DataError, UserError


def convert(dataset: str, data_dir: str | None = None) -> list[str]:
    """Writes the ArrayRecord shards of every split of a prepared tfds dataset; returns their paths."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.file_adapters import ArrayRecordFileAdapter, FileFormat

    builder = tfds.builder(dataset, data_dir=data_dir)
    if not builder.is_prepared():
        raise DataError(f"tfds dataset {dataset!r} is not prepared in {os.fspath(builder.data_dir_root)}; nothing to "
                        f"convert.")
    info = builder.info
    if FileFormat.ARRAY_RECORD in info.available_file_formats():
        print(f"{dataset} in {builder.data_dir} already has ArrayRecord files.")
        return []
    written = []
    for split in info.splits.values():
        template = split.filename_template
        out_template = template.replace(filetype_suffix=FileFormat.ARRAY_RECORD.file_suffix)
        for shard, expected in enumerate(split.shard_lengths):
            source = os.fspath(template.sharded_filepath(shard_index=shard, num_shards=split.num_shards))
            target = os.fspath(out_template.sharded_filepath(shard_index=shard, num_shards=split.num_shards))
            written.append(target)
            if os.path.exists(target):  # done by an interrupted earlier run
                continue
            start, partial = time.perf_counter(), target + ".incomplete"
            records = tf.data.TFRecordDataset(source).as_numpy_iterator()
            ArrayRecordFileAdapter.write_examples(partial, ((None, record) for record in records))
            count = ArrayRecordFileAdapter.num_examples(partial)
            if count != expected:
                raise DataError(f"{source} holds {count} records, but dataset_info.json says {expected}.")
            os.replace(partial, target)
            print(f"{split.name} shard {shard + 1}/{split.num_shards}: {count} examples -> {target} "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
    info.add_alternative_file_format(FileFormat.ARRAY_RECORD)
    info.write_dataset_info_json(builder.data_dir)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="tfds dataset name, e.g. cifar10 or imagenet2012:5.1.0")
    parser.add_argument("--data_dir", default=None, help="tfds data_dir (default: tfds's own)")
    args = parser.parse_args(argv)
    data_dir = os.path.expanduser(args.data_dir) if args.data_dir else None
    try:
        written = convert(args.dataset, data_dir)
    except UserError as error:  # a mistake in the input: its message is the whole story
        sys.exit(f"error: {error}")
    if written:
        print(f"Wrote {len(written)} ArrayRecord shard(s); the tfds source now reads {args.dataset} by index.")


if __name__ == "__main__":
    main()
