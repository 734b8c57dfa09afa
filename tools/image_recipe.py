import sys, itertools, numpy as np, time
from pathlib import Path
from objsearch.detector import Detector, IMAGE_BLOCKS
from objsearch import image_eval as ie
data = Path(sys.argv[1]); limit = int(sys.argv[2]) if len(sys.argv) > 2 else None
W = "/work/shared/data/weights/yolov8n-reconstructed.pt"
det = Detector(W, image_recipe={b: 1.0 for b in IMAGE_BLOCKS})
paths, images = ie.load_images(data, limit)
t0=time.time()
ours = ie.collect_ours(det, paths, images)
print("collect", time.time()-t0, "ms", ours.ms_per_image, ours.pass_ms_per_image, flush=True)
np.savez("/tmp/recipe_feats.npz", f=ours.features, **{k: v for k, v in ours.queries.items()})
nc=len(det.names); neck=448; cls=det.head.cv3[0][-1].in_channels*3
sizes={"neck_gap":neck,"neck_gmp":neck,"cls_gap":cls,"cls_max":nc,"cls_sum":nc}
assert sum(sizes.values())==ours.features.shape[1], (sizes, ours.features.shape)
off={};o=0
for b in IMAGE_BLOCKS: off[b]=(o,o+sizes[b]); o+=sizes[b]
def sub(X, w):
    parts=[X[:, off[b][0]:off[b][1]]/np.maximum(np.linalg.norm(X[:, off[b][0]:off[b][1]],axis=1,keepdims=True),1e-12)*wt for b,wt in w.items()]
    return np.concatenate(parts,1)
recipes=[{b:1.0} for b in IMAGE_BLOCKS]+[{"neck_gap":1,"cls_max":0.5},{"neck_gap":1,"cls_max":1},{"neck_gap":1,"cls_sum":0.5},{"neck_gap":1,"cls_sum":1},{"neck_gap":1,"neck_gmp":1},{"neck_gap":1,"cls_gap":1},{"neck_gap":1,"cls_gap":1,"cls_max":0.5},{"cls_gap":1,"cls_max":0.5},{"neck_gmp":1,"cls_max":0.5},{"neck_gap":1,"cls_sum":2}]
for w in recipes:
    d=ie.ImageEvalData("x", sub(ours.features,w), {t: sub(q,w) for t,q in ours.queries.items()}, ours.largest_class, ours.classes, 0)
    for dims in (None, 32):
        r=ie.score_images(d, dims)
        print(w, r["dims"], {k: round(v,3) for k,v in r["precision_at_k"].items()}, {k: round(v,3) for k,v in r["instance_recall_at_1"].items()}, flush=True)
