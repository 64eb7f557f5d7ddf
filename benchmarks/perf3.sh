#!/usr/bin/env bash
# Issue 23's CPU rows, re-measured in one command (about 5 minutes on the 2-core EPYC when the
# machine is quiet; add --full for one complete FractalMAR-64 draw, about 5.5 minutes more).
#
#   1. the small 3-level MAR against the AR of the same sizes, batch 32, fp32, at 2 threads and
#      at 1 thread: steps alternated MAR / AR per round, forward / backward / optimizer split,
#      MAR/AR ratios per round (step, forward, backward), and one profiled step per model with
#      the operators' self-CPU shares, forward and backward separately
#      -> results/small_models_perf3_t2.json, results/small_models_perf3_t1.json
#   2. bf16 autocast against fp32 at batch 1, 2 threads, pairs of draws in turn over a reduced
#      number of top-level steps: FractalAR-64 (8 steps per draw, 3 pairs) and FractalMAR-64
#      (2 steps per draw, 2 pairs); random weights (speed, not quality)
#      -> results/profile_sampling_fractal{ar,mar}-in64_b1_fp32_vs_bf16_perf3.json
#   3. what the prepacked bf16 weights gain: FractalAR-64 bf16 draws without and with them in turn
#      (3 pairs), and the skinny-product forms over its weights (benchmarks/bf16_gemv.py)
#      -> results/profile_sampling_fractalar-in64_b1_bf16_packed_vs_unpacked_perf3.json,
#         results/bf16_gemv_perf3.json
#   4. with --full: one FractalMAR-64 draw at batch 1, fp32, published settings, beside its FLOP
#      bound from this machine's fp32 matmul rate (target 2; needs 3 quiet runs to count)
#      -> results/throughput_cpu_fractalmar-in64_sampling_perf3.json
#
# Run from the repository root or anywhere: bash benchmarks/perf3.sh [--full]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
uptime
python benchmarks/small_models.py --threads 2 --steps 6 --profile --tag perf3_t2
python benchmarks/small_models.py --threads 1 --steps 4 --profile --tag perf3_t1
python benchmarks/profile_levels.py --preset fractalar-in64 --batch 1 --sampling --steps 8 \
    --alternate 3 --threads 2 --tag perf3
python benchmarks/profile_levels.py --preset fractalmar-in64 --batch 1 --sampling --steps 2 \
    --alternate 2 --threads 2 --tag perf3
python benchmarks/profile_levels.py --preset fractalar-in64 --batch 1 --sampling --steps 8 \
    --compare-packing 3 --threads 2 --tag perf3
python benchmarks/bf16_gemv.py --threads 1 2 --tag perf3
if [[ "${1:-}" == "--full" ]]; then
    python benchmarks/throughput.py --presets fractalmar-in64 --batches 1 --no-train --threads 2 \
        --tag perf3
fi
uptime
