#!/usr/bin/env bash
# The prepared GPU-session script (issue 4): run it on a machine with a CUDA device,
# from the repository root, with OUT naming a folder for the logs and results.
#   1. the prior contract tests on CUDA, and the CUDA-marked MCMC test;
#   2. batched encode + decode of N=1000 states, CPU vs CUDA (benchmarks/prior_throughput.py);
#   3. the GPU-sized prior models/sw_vortex_vae_k64.yaml, trained on CUDA with a step budget
#      fixed from a measured step time (TRAIN_SECONDS, default 270 s), so the card's command
#      (`latentda train-prior ... --device cuda --steps N`) reproduces it.
# SKIP_CHECKS=1 runs step 3 alone. Optional wheels for packages the machine lacks are
# installed from .whl/ when present.
set -u
OUT=${OUT:-/tmp/latentda_gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, numba, zarr, pydantic; print('torch', torch.__version__, torch.cuda.get_device_name(0))" || exit 1
# the climatology of step 3 is simulated on one CPU core while steps 1-2 run
python3 - >"$OUT/climatology.log" 2>&1 <<'PY' &
from latentda.prior_training import load_prior_config, simulate_climatology
import time; t = time.time()
X = simulate_climatology(load_prior_config("models/sw_vortex_vae_k64.yaml"), progress=False)
print("climatology", X.shape, round(time.time() - t, 1), "s")
PY
CLIM=$!
if [ "${SKIP_CHECKS:-0}" != 1 ]; then
python3 -m pytest tests/test_priors_contract.py --device cuda -q -p no:cacheprovider 2>&1 \
  | tail -15 | tee "$OUT/contract_cuda.log"
python3 -m pytest tests/test_mcmc.py -m gpu -q -p no:cacheprovider 2>&1 | tail -5 \
  | tee -a "$OUT/contract_cuda.log"
python3 benchmarks/prior_throughput.py 2>&1 | tail -20 | tee "$OUT/throughput.log"
cp benchmarks/results/prior_throughput.json "$OUT/" 2>/dev/null
fi
wait $CLIM; cat "$OUT/climatology.log"
STEPS=$(python3 - <<'PY'
import time, torch, numpy as np
from latentda import priors
from latentda.prior_training import load_prior_config, _family_kwargs
import os
pc = load_prior_config("models/sw_vortex_vae_k64.yaml")
p = priors.FAMILIES[pc.family](**_family_kwargs(pc, 12288)).to("cuda")
p.set_normalization(np.zeros(12288), np.ones(12288))
opts = p.make_optimizers(1e-4)
x = torch.randn(pc.training.batch_size, 12288, device="cuda")
for i in range(60):
    if i == 10:
        torch.cuda.synchronize(); t = time.perf_counter()
    p.train_step(x, opts, i + 1)
torch.cuda.synchronize(); dt = 1.3 * (time.perf_counter() - t) / 50  # + evaluations
budget = float(os.environ.get("TRAIN_SECONDS", "270"))
print(max(1000, min(pc.training.steps, int(budget / dt) // 1000 * 1000)))
PY
)
echo "vortex prior: $STEPS steps" | tee "$OUT/vortex.log"
python3 -c "from latentda.cli import main; main(['train-prior', 'models/sw_vortex_vae_k64.yaml', '--device', 'cuda', '--steps', '$STEPS', '--overwrite', '--quiet'])" 2>&1 | tee -a "$OUT/vortex.log"
cp models/sw_vortex_vae_k64.pt models/sw_vortex_vae_k64.json models/sw_vortex_vae_k64.md "$OUT/" 2>/dev/null
ls -la "$OUT"
