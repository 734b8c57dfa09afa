"""Reverse video search on the real clips: index the clips of ``../shared/data/video`` (and coco128 as
distractors), query with 3-second cuts of each clip made with OpenCV, and print where the right video and moment
rank (issue 13).

Usage::

    python tools/eval_reverse_video.py [--index runs/clips.h5] [--cuts 3] [--imgsz 640] [--video-fps 1]

A cut is right at rank 1 when the summary's first video is the clip it was cut from; its moment is right when the
first moment of that video overlaps the cut's time span (±1 s).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def cut(src: Path, dst: Path, start_s: float, seconds: float) -> Path:
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.set(cv2.CAP_PROP_POS_FRAMES, int(start_s * fps))
    writer = None
    for _ in range(int(seconds * fps)):
        ok, frame = cap.read()
        if not ok:
            break
        if writer is None:
            writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0]))
        writer.write(frame)
    writer.release()
    cap.release()
    return dst


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "objsearch", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=None, help="reuse (or write) this index")
    parser.add_argument("--cuts", type=int, default=3, help="3-second cuts per clip, evenly spread")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--video-fps", type=float, default=1.0)
    parser.add_argument("-k", type=int, default=8)
    args = parser.parse_args()
    clips = sorted((DATA / "video").glob("*.mp4"))
    with tempfile.TemporaryDirectory() as tmp:
        index = args.index or Path(tmp) / "clips.h5"
        if not index.exists():
            folder = Path(tmp) / "media"
            shutil.copytree(DATA / "coco128" / "images" / "train2017", folder / "coco128")
            for clip in clips:
                shutil.copy(clip, folder / clip.name)
            done = cli("analyze", folder, "-o", index, "--imgsz", args.imgsz, "--video-fps", args.video_fps)
            print(done.stdout.strip().splitlines()[-1] if done.returncode == 0 else done.stderr)
            if done.returncode:
                sys.exit(1)
        n_right = n_moment = n = 0
        for clip in clips:
            cap = cv2.VideoCapture(str(clip))
            duration = cap.get(cv2.CAP_PROP_FRAME_COUNT) / cap.get(cv2.CAP_PROP_FPS)
            cap.release()
            for i in range(args.cuts):
                start = (duration - 3.0) * (i + 0.5) / args.cuts
                query = cut(clip, Path(tmp) / "query.mp4", start, 3.0)
                fps = cv2.VideoCapture(str(query)).get(cv2.CAP_PROP_FPS)
                done = cli("video", query, "-i", index, "--summary", "--json", "--stride", max(1, round(fps / 2)),
                           "-k", args.k)
                if done.returncode:
                    print(done.stderr)
                    continue
                videos = json.loads(done.stdout)["videos"]
                paths = [v["path"] for v in videos]
                rank = paths.index(clip.name) + 1 if clip.name in paths else None
                top = videos[paths.index(clip.name)]["moments"][0] if rank else None
                hit = bool(top and top["start_s"] <= start + 4.0 and top["end_s"] >= start - 1.0)
                n += 1
                n_right += rank == 1
                n_moment += rank == 1 and hit
                print(f"{clip.name} cut {start:5.1f}-{start + 3:5.1f} s: rank {rank}, its first moment "
                      f"{top['start_s'] if top else '-'}-{top['end_s'] if top else '-'} s "
                      f"({'overlaps' if hit else 'misses'}), scores "
                      + ", ".join(f"{v['path']} {v['score']:.1f}" for v in videos[:3]))
        print(f"right video first: {n_right}/{n}; right video and moment first: {n_moment}/{n}")


if __name__ == "__main__":
    main()
