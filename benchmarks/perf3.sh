#!/usr/bin/env bash
# Issue 23's CPU rows, re-measured in one command. About 8 minutes on the 2-core EPYC when the
# machine is quiet; --original adds about 4, --full about 17 (run nothing else meanwhile).
#
#   1. the small 3-level MAR against the AR of the same sizes, batch 32, fp32, at 2 threads and
#      at 1 thread: steps alternated MAR / AR per round, forward / backward / optimizer split,
#      MAR/AR ratios per round (step, forward, backward), minor page faults per step, and one
#      profiled step per model with the operators' self-CPU shares, forward and backward; then
#      once more at 2 threads with glibc's malloc defaults (--no-keep-host-memory)
#      -> results/small_models_TAG_t2.json, _t1.json, _t2_nokeep.json
#   2. with --original PATH (a checkout of LTH14/fractalgen at c7d0990): the same small models in
#      both codes, steps of the four models in turn, with and without kept host memory, and the
#      paper models' training step (FractalMAR-64 and FractalAR-64, batch 1, fp32 and bf16) in
#      both codes -> results/against_original_TAG{,_keep,_presets}.json
#   3. the paper models' training step at batch 1 (FractalMAR-64 fp32 and bf16 autocast, with
#      peak RSS, and fp32 again with glibc's malloc defaults; FractalAR-64 fp32), executed FLOPs
#      against the machine's pinned matmul rate (target 4); then FractalMAR-64's fp32 and bf16
#      steps of one model alternated, 3 rounds, with a third bf16 step on SDPA for all attention
#      -> results/throughput_cpu_fractalmar-in64_training_TAG{,_nokeep}.json, ..._fractalar-in64_...,
#         results/throughput_cpu_fractalmar-in64_training_alternate_t2_TAG.json
#   4. bf16 autocast against fp32 at batch 1, 2 threads, pairs of draws in turn over a reduced
#      number of top-level steps: FractalAR-64 (8 steps per draw, 3 pairs) and FractalMAR-64
#      (2 steps per draw, 2 pairs); bf16 draws without and with prepacked weights; the skinny
#      product forms over FractalAR-64's weights; random weights (speed, not quality)
#      -> results/profile_sampling_fractal{ar,mar}-in64_b1_fp32_vs_bf16_TAG.json,
#         results/profile_sampling_fractalar-in64_b1_bf16_packed_vs_unpacked_TAG.json,
#         results/bf16_gemv_TAG.json
#   5. with --full: complete draws at batch 1 with the published settings: FractalAR-64 fp32 and
#      bf16, and FractalMAR-64 fp32 three times, each beside its FLOP bound from the fp32
#      matmul rate measured in that run (target 2 counts 3 of 3 quiet runs)
#      -> results/throughput_cpu_fractalar-in64_sampling_TAG.json,
#         results/throughput_cpu_fractalmar-in64_sampling_TAG_run{1,2,3}.json
#
#   0. first, the reference matmul rate's stability: five fresh processes at 2 threads
#      -> results/machine_rate_stability_TAG.json
#
# Run from anywhere: bash benchmarks/perf3.sh [--tag TAG] [--original PATH] [--full]
# (TAG defaults to perf3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
tag=perf3 original="" full=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) tag="$2"; shift 2 ;;
        --original) original="$2"; shift 2 ;;
        --full) full=1; shift ;;
        *) echo "perf3.sh: unknown argument $1 (use --tag TAG, --original PATH, --full)" >&2; exit 2 ;;
    esac
done
uptime
python benchmarks/machine.py --repeat 5 --threads 2 --out "benchmarks/results/machine_rate_stability_${tag}.json"
python benchmarks/small_models.py --threads 2 --steps 6 --profile --tag "${tag}_t2"
python benchmarks/small_models.py --threads 1 --steps 4 --profile --tag "${tag}_t1"
python benchmarks/small_models.py --threads 2 --steps 4 --no-keep-host-memory --tag "${tag}_t2_nokeep"
if [[ -n "$original" ]]; then
    python benchmarks/against_original.py --original "$original" --threads 2 --steps 5 --tag "$tag"
    python benchmarks/against_original.py --original "$original" --threads 2 --steps 5 \
        --keep-host-memory --tag "${tag}_keep"
    python benchmarks/against_original.py --original "$original" --threads 2 --skip-small \
        --preset fractalmar-in64 fractalar-in64 --tag "${tag}_presets"
fi
python benchmarks/throughput.py --presets fractalmar-in64 --batches 1 --no-sample --bf16 --threads 2 \
    --tag "$tag"
python benchmarks/throughput.py --presets fractalmar-in64 --batches 1 --no-sample --threads 2 \
    --no-keep-host-memory --tag "${tag}_nokeep"
python benchmarks/throughput.py --presets fractalar-in64 --batches 1 --no-sample --threads 2 --tag "$tag"
python benchmarks/throughput.py --presets fractalmar-in64 --batches 1 --no-sample --threads 2 \
    --alternate 3 --bf16-sdpa --tag "$tag"
python benchmarks/profile_levels.py --preset fractalar-in64 --batch 1 --sampling --steps 8 \
    --alternate 3 --threads 2 --tag "$tag"
python benchmarks/profile_levels.py --preset fractalmar-in64 --batch 1 --sampling --steps 2 \
    --alternate 2 --threads 2 --tag "$tag"
python benchmarks/profile_levels.py --preset fractalar-in64 --batch 1 --sampling --steps 8 \
    --compare-packing 3 --threads 2 --tag "$tag"
python benchmarks/bf16_gemv.py --threads 1 2 --tag "$tag"
if [[ -n "$full" ]]; then
    python benchmarks/throughput.py --presets fractalar-in64 --batches 1 --no-train --bf16 \
        --threads 2 --tag "$tag"
    for run in 1 2 3; do
        python benchmarks/throughput.py --presets fractalmar-in64 --batches 1 --no-train \
            --threads 2 --tag "${tag}_run$run"
    done
fi
uptime
