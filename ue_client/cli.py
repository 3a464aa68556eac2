"""``meg-ue``: send prompts from the UE to an edge server (usually through the channel proxy)."""

from __future__ import annotations

import argparse
import json
import sys

import grpc

from shared.protocols import PROTOCOLS, TASKS, check_prompt


def _generate(args: argparse.Namespace) -> int:
    from shared.images import load_png, save_png
    from shared.model_ops import ModelParts, Params
    from ue_client.session import EdgeClient, check_geometry, generate

    prompt = check_prompt(args.prompt)
    parts = ModelParts.load(args.model, args.device)
    image_in = load_png(args.image, parts.geometry.image_size) if args.image else None
    with EdgeClient(args.via, timeout_s=args.timeout, ue_id=args.ue_id, es_name=args.es) as client:
        check_geometry(parts, client.describe())
        params = Params(seed=args.seed, steps=args.steps, guidance=args.guidance, strength=args.strength)
        result = generate(parts, client, prompt, args.protocol, args.task, params, image_in)
    save_png(result.image, args.out)
    summary = {**result.summary(), "out": str(args.out), "prompt": prompt, "seed": args.seed}
    if args.json:
        print(json.dumps(summary))
    else:
        up, down = result.uplink, result.downlink
        print(f"{result.protocol} {result.task}: wrote {args.out} in {result.seconds:.2f}s (ES {result.es_seconds:.2f}s)")
        for name, acc in (("uplink", up), ("downlink", down)):
            snr = "direct link" if acc.channel is None else f"{acc.channel}" + (f" {acc.snr_db:g} dB" if acc.snr_db is not None else "")
            print(f"  {name:8s} {acc.symbols:>9d} symbols {acc.payload_bytes:>10d} B tensors {acc.text_bytes:>5d} B text  ({snr})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meg-ue", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate one image with a protocol")
    gen.add_argument("prompt")
    gen.add_argument("--protocol", default="CIAG", type=str.upper, choices=list(PROTOCOLS))
    gen.add_argument("--task", default=None, choices=list(TASKS), help="default: img2img with --image, else txt2img")
    gen.add_argument("--via", required=True, help="HOST:PORT of the channel proxy (or of the ES directly)")
    gen.add_argument("--out", default="meg.png", help="PNG to write (default meg.png)")
    gen.add_argument("--model", help="the UE's copy of the model folder (default: embedded meg-tiny)")
    gen.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=0, help="DDIM steps (0 = the model's default)")
    gen.add_argument("--guidance", type=float, default=0.0, help="guidance scale (0 = the model's default)")
    gen.add_argument("--image", help="input image for text-guided img2img")
    gen.add_argument("--strength", type=float, default=0.0)
    gen.add_argument("--timeout", type=float, default=120.0, help="deadline of the whole generation, seconds")
    gen.add_argument("--ue-id", default="ue", help="this UE's name on the channel proxy (its link is UE->ES)")
    gen.add_argument("--es", help="which edge server behind the proxy (by name; default its first)")
    gen.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if getattr(args, "task", "x") is None:
        args.task = "img2img" if args.image else "txt2img"
    try:
        return _generate(args)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.UNAVAILABLE:
            print(f"meg-ue: error: cannot reach the edge server at {args.via}: {details}", file=sys.stderr)
        else:
            print(f"meg-ue: error: {code.name}: {details}", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"meg-ue: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
