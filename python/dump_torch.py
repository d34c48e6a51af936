"""Dumps the tensors of a torch.save file (state_dict or whole module) as safetensors, for the Rust tests that
check cryoden-topaz's restricted unpickler against torch.load itself.

    python dump_torch.py IN.sav OUT.safetensors [IN2 OUT2 ...]

The state_dict order is kept in the metadata key "order" (a JSON list), since safetensors sorts its keys.
torch.load runs with weights_only=False because that is what Topaz does; only use it on trusted files.
"""
import json
import sys

import torch
from safetensors.torch import save_file


def dump(src: str, dst: str) -> None:
    obj = torch.load(src, map_location="cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):
        module_class = f"{type(obj).__module__}.{type(obj).__name__}"
        obj = obj.state_dict()
    else:
        module_class = ""
    tensors = {k: v.detach().contiguous() for k, v in obj.items()}
    save_file(tensors, dst, metadata={"order": json.dumps(list(tensors)), "module_class": module_class})


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or len(args) % 2:
        sys.exit("usage: dump_torch.py IN OUT [IN OUT ...]")
    for i in range(0, len(args), 2):
        dump(args[i], args[i + 1])
