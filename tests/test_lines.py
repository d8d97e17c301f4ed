"""Line numbers stay exact when a file is split across many partitions, and across several files."""

from __future__ import annotations

from persona4rec.jobs.prepare.lines import text_lines


def test_line_numbers_across_partitions_and_files(spark, tmp_path):
    for name, n in (("a.json", 3000), ("b.json", 1200)):
        (tmp_path / name).write_text("".join(f"{name}:{i}\n" for i in range(1, n + 1)))
    key = "spark.sql.files.maxPartitionBytes"
    old = spark.conf.get(key)
    spark.conf.set(key, "4096")  # forces ~10 partitions per file
    try:
        df = text_lines(spark, str(tmp_path))
        assert df.rdd.getNumPartitions() > 5
        rows = df.select("value", "source_file", "source_line").collect()
    finally:
        spark.conf.set(key, old)
    assert len(rows) == 4200
    for row in rows:
        assert row.value == f"{row.source_file}:{row.source_line}"
