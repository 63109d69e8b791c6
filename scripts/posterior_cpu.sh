#!/usr/bin/env bash
# The CPU study of the README's Results ("A posterior worth sampling", "Every method on MRPC and
# RTE"): every method on one task, 3 seeds, MiniLM, the experiment=posterior_cpu_* configs.
#
#   bash scripts/posterior_cpu.sh <task> <ood task|none> [stage ...]
#   bash scripts/posterior_cpu.sh mrpc rte          # all stages
#   bash scripts/posterior_cpu.sh sst2 none map sgld csgld eval_map
#
# Stages (in this order by default; each skips what is already done, so the script can be rerun
# after a crash or a kill): map sgld csgld sam swag blob laplace eval_map eval_glm eval_pooled eta.
# The temperature of SAM-SGLD and of the step-size check (eta) is the SGLD temperature with the
# lower pooled validation NLL (stage sgld). Runs go to multirun/posterior_cpu/<task>/, the
# validation-only selection runs to multirun/posterior_cpu_select/<task>/ (kept out of the report).
# Environment: DATA_DIR (default ../shared/data), OMP_NUM_THREADS.
set -uo pipefail
task=$1; ood=$2; shift 2
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(map sgld csgld sam swag blob laplace eval_map eval_glm eval_pooled eta)
D=${DATA_DIR:-../shared/data}
S=multirun/posterior_cpu/$task
SEL=multirun/posterior_cpu_select/$task
py=${PYTHON:-python}
log() { echo "[$(date +%H:%M:%S)] $task: $*"; }
finished() { ls "$1"/*/metrics.json 2>/dev/null | wc -l; }
sweep() {  # sweep <folder> <overrides...>: the 3 seeds of one config
  local dir=$1; shift
  if [ "$(finished "$dir")" -ge 3 ]; then log "done already: $dir"; return; fi
  log "train $dir"
  $py -m bayesian_lora.train -m "$@" paths.data_dir="$D" || log "FAILED: $dir"
}
ev() {  # ev <out_dir> <overrides...>
  local out=$1; shift
  if [ -f "$out/metrics.json" ]; then log "done already: $out"; return; fi
  log "evaluate $out"
  $py -m bayesian_lora.evaluate "$@" out_dir="$out" paths.data_dir="$D" || log "FAILED: $out"
}
chosen_T() {  # the SGLD temperature with the lower pooled validation NLL
  $py - "$SEL" <<'PY'
import json, pathlib, sys
sel = pathlib.Path(sys.argv[1])
nll = {t: json.loads((sel / f"sgld_T{t}_validation/metrics.json").read_text())["ensemble"]["nll"]
       for t in ("0.1", "1.0")}
print(min(nll, key=nll.get))
PY
}
ood_arg=()
[ "$ood" = none ] || ood_arg=("ood=$ood")
for stage in "${stages[@]}"; do
  case $stage in
  map) sweep $S/map experiment=posterior_cpu_map data=$task ;;
  sgld|csgld)
    for T in 0.1 1.0; do
      sweep $S/${stage}_T$T experiment=posterior_cpu_$stage data=$task sampler.temperature=$T \
        sampler.warmup.from_run=$S/map
      ev $SEL/${stage}_T${T}_validation "run_dirs=[$S/${stage}_T$T/*]" split=validation plots=false
    done ;;
  sam) T=$(chosen_T)
    sweep $S/sam_sgld_T$T experiment=posterior_cpu_sam_sgld data=$task sampler.temperature=$T \
      sampler.warmup.from_run=$S/map ;;
  swag|blob) sweep $S/$stage experiment=posterior_cpu_$stage data=$task sampler.warmup.from_run=$S/map ;;
  laplace)  # KFAC around each MAP fit, prior precision by the marginal likelihood, 10 draws
    for r in $S/map/*_s[0-9]; do
      out=$S/laplace_kron/$(basename "$r")
      [ -f "$out/metrics.json" ] && continue
      log "laplace $r"
      $py -m bayesian_lora.laplace run_dir="$r" structure=kron prior_precision=marglik \
        num_samples=10 out_dir="$out" paths.data_dir="$D" || log "FAILED: laplace $r"
    done ;;
  eval_map)  # per seed: OOD + temperature scaling, MC dropout; the deep ensemble (+ temperature)
    for r in $S/map/*_s[0-9]; do
      ev $r/evaluation run_dir=$r "${ood_arg[@]}" calibrate=temperature
      ev $r/evaluation_mcdropout10 run_dir=$r mc_dropout=10 "${ood_arg[@]}" plots=false
    done
    ev $S/map/evaluation_deep_ensemble "run_dirs=[$S/map/*_s?]" "${ood_arg[@]}" calibrate=temperature ;;
  eval_glm)  # per Laplace fit: the linearised (GLM) predictive, probit link
    for r in $S/laplace_kron/*_s[0-9]; do
      [ -d "$r" ] && ev $r/evaluation_glm run_dir=$r predictive=glm glm_link=probit "${ood_arg[@]}" plots=false
    done ;;
  eval_pooled)  # OOD of the pooled ensembles: the last member of each seed's run (3 members,
    # as the deep ensemble) for every method; all 30 members for the chains at the chosen T
    for g in $S/{sgld,csgld,sam_sgld}_T* $S/swag $S/blob $S/laplace_kron; do
      [ -d "$g" ] && ev $g/evaluation_pooled_k3 "run_dirs=[$g/*_s?]" k=3 "${ood_arg[@]}" plots=false
    done
    T=$(chosen_T)
    for g in $S/sgld_T$T $S/csgld_T$T; do
      [ -d "$g" ] && ev $g/evaluation_pooled_all "run_dirs=[$g/*_s?]" "${ood_arg[@]}" plots=false
    done ;;
  eta)  # the step size at the chosen T: SGLD seed 0 at eta 0.03 and 0.3 beside 0.1, validation only
    T=$(chosen_T)
    for eta in 0.03 0.3; do
      d=$SEL/sgld_eta${eta}_T$T
      [ -f "$d/samples.safetensors" ] || $py -m bayesian_lora.train experiment=posterior_cpu_sgld \
        data=$task seed=0 sampler.lr=$eta sampler.temperature=$T sampler.warmup.from_run=$S/map \
        evaluate_on_fit_end=false paths.data_dir="$D" hydra.run.dir="$d"
      ev $d/evaluation_validation run_dir=$d split=validation plots=false
    done
    ev $SEL/sgld_eta0.1_T${T}_s0_validation "run_dir=$(ls -d $S/sgld_T$T/*_s0)" split=validation plots=false ;;
  *) log "unknown stage $stage (map sgld csgld sam swag blob laplace eval_map eval_glm eval_pooled eta)"; exit 2 ;;
  esac
done
log "stages done: ${stages[*]}"
