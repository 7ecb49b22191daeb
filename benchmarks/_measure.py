"""Shared by the benchmarks: memory readings of a child process."""


def rss_anon_kib(pid: int) -> int | None:
    """The process's anonymous resident memory (heap, not file pages) in KiB; None once gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
