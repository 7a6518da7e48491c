"""The downloader's socket read size: what keeps it near curl's throughput (bench/downloads.py)."""

import httpcore

from dreamforge.registry import transfer


def test_downloads_read_the_socket_a_megabyte_at_a_time() -> None:
    # httpcore's default is 64 KiB; transfer.py raises it by setting this class attribute, which an
    # httpcore release could rename without notice.
    assert "READ_NUM_BYTES" in vars(httpcore.HTTP11Connection)
    assert httpcore.HTTP11Connection.READ_NUM_BYTES == transfer._CHUNK == 1024 * 1024
