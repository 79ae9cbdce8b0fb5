#!/usr/bin/env bash
# The MPO pipeline, stage by stage, into runs/<run>/ (Gou & Nguyen, 2024, arXiv 2403.19443):
#   01 SFT -> 02 reward model -> 03 easy/hard split -> 04 DPO on easy -> 05 PPO on hard (ref = DPO) -> 06 eval
#
#   bash run.sh                      # MPO on the built-in task; CPU budgets on a CPU, full budgets on a GPU
#   bash run.sh --compare            # + vanilla DPO, DPO on hard, vanilla PPO, PPO with the SFT reference;
#                                    #   all evaluated in one 06 call
#   bash run.sh --compare --ipo      # + offline IPO, online IPO and IPO-MD (Calandriello et al., 2024)
#   bash run.sh --run seed1 --seed 1 # another run directory and seed
#   bash run.sh --model DIR --dataset FILE.jsonl.gz   # other model or data (named once, in stage 01)
#
# Extra flags after `--` go to 01_sft.py (e.g. `-- --max-train-pairs 500`).
set -euo pipefail
cd "$(dirname "$0")"

RUN=default; SEED=0; COMPARE=0; IPO=0; DEVICE=auto; MODEL=""; DATASET=builtin; BUDGET=auto; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --run) RUN="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --compare) COMPARE=1; shift ;;
    --ipo) IPO=1; shift ;;
    --device) DEVICE="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    --dataset) DATASET="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;   # cpu | gpu | tiny (the tests' toy budget)
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;   # the comment block above
    *) echo "run.sh: unknown option $1 (see bash run.sh --help)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python}
if [ "$BUDGET" = auto ]; then
  if [ "$DEVICE" = cpu ]; then BUDGET=cpu
  elif $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then BUDGET=gpu
  else BUDGET=cpu; fi
fi
R="runs/$RUN"
COMMON=(--run "$RUN" --seed "$SEED" --device "$DEVICE" --overwrite)

# Budgets. CPU: 2 cores, bf16 autocast (matrix products about 5x faster than fp32 on a CPU with bf16
# support, whole steps about 1.6x), fewer pairs and steps. GPU: full passes over the data.
# tiny: the end-to-end test.
case "$BUDGET" in
  cpu)
    PREC=(--precision bf16)
    SFT=(--builtin-train-pairs 1000 --builtin-test-prompts 200 --max-steps 80)
    RM=(--max-steps 80); DPO=(--max-steps 50); PPO=(--steps 16)
    ONLINE=(--max-steps 20); EVAL=()
    # measured on 2 cores: 24 min in all; --compare adds about 26 min
    # (two more DPO and two more PPO runs, four more policies in 06)
    TIMES="01 ~3 min | 02 ~5 min | 03 ~2 min | 04 ~5.5 min | 05 ~5 min | 06 ~4 min (2 cores, bf16)";;
  gpu)
    # batches of 32: a 135M model leaves a GPU idle at 8 sequences a step
    PREC=(); SFT=(--builtin-train-pairs 4000 --builtin-test-prompts 400 --batch-size 32 --lr 5e-5)
    RM=(--batch-size 32 --lr 5e-5); DPO=(--batch-size 32 --lr 1e-5)
    PPO=(--steps 40 --rollout-batch 32 --minibatch-size 8); ONLINE=(--max-steps 40 --batch-size 16); EVAL=()
    TIMES="01 ~1 min | 02 ~1 min | 03 <1 min | 04 ~1 min | 05 ~3 min | 06 ~2 min";;
  tiny)
    PREC=(); SFT=(--builtin-train-pairs 120 --builtin-test-prompts 12 --max-steps 4 --lr 1e-3)
    RM=(--max-steps 4 --lr 1e-3); DPO=(--max-steps 3 --lr 1e-4); PPO=(--steps 2 --max-new-tokens 8 --lr 1e-4)
    ONLINE=(--max-steps 2 --max-new-tokens 8 --eval-every 1); EVAL=(--max-new-tokens 8 --bootstrap 50)
    TIMES="seconds";;
  *) echo "run.sh: --budget must be cpu, gpu or tiny" >&2; exit 2;;
esac
[ -n "$MODEL" ] && SFT+=(--model "$MODEL")
SPLIT=()
[ "$BUDGET" = tiny ] && SPLIT=(--easy-fraction 0.5)

echo "run.sh: run $R, seed $SEED, budget $BUDGET, device $DEVICE, dataset $DATASET"
echo "run.sh: expected wall time per stage ($BUDGET): $TIMES"
START=$(date +%s)
stage() { echo; echo "=== $* ==="; local t=$(date +%s); "$PY" "$@"; echo "--- $(( $(date +%s) - t ))s"; }

stage 01_sft.py "${COMMON[@]}" "${PREC[@]}" --dataset "$DATASET" "${SFT[@]}" "${EXTRA[@]}"
stage 02_reward.py "${COMMON[@]}" "${PREC[@]}" "${RM[@]}"
stage 03_split.py "${COMMON[@]}" "${PREC[@]}" "${SPLIT[@]}"
stage 04_dpo.py "${COMMON[@]}" "${PREC[@]}" "${DPO[@]}"
stage 05_ppo.py "${COMMON[@]}" "${PREC[@]}" "${PPO[@]}"
POLICIES=("$R/01_sft" "$R/04_dpo" "$R/05_ppo")

if [ "$COMPARE" = 1 ]; then
  # baselines and ablations, on the same SFT model and reward model
  stage 04_dpo.py "${COMMON[@]}" "${PREC[@]}" "${DPO[@]}" --split all --out "$R/04_dpo_all"
  stage 04_dpo.py "${COMMON[@]}" "${PREC[@]}" "${DPO[@]}" --split hard --out "$R/04_dpo_hard"
  stage 05_ppo.py "${COMMON[@]}" "${PREC[@]}" "${PPO[@]}" --policy "$R/01_sft" --ref "$R/01_sft" \
        --prompts all --out "$R/05_ppo_vanilla"
  stage 05_ppo.py "${COMMON[@]}" "${PREC[@]}" "${PPO[@]}" --policy "$R/04_dpo" --ref "$R/01_sft" \
        --out "$R/05_ppo_sftref"
  POLICIES+=("$R/04_dpo_all" "$R/04_dpo_hard" "$R/05_ppo_vanilla" "$R/05_ppo_sftref")
fi
if [ "$IPO" = 1 ]; then
  # the IPO family of Calandriello et al. (2024) on the easy set: offline, online, and IPO-MD
  stage 04_dpo.py "${COMMON[@]}" "${PREC[@]}" "${DPO[@]}" --loss ipo --out "$R/04_ipo"
  stage 04_dpo.py "${COMMON[@]}" "${PREC[@]}" "${ONLINE[@]}" --online --loss ipo --out "$R/04_ipo_online"
  stage 04_dpo.py "${COMMON[@]}" "${PREC[@]}" "${ONLINE[@]}" --online --loss ipo --mixture-beta 0.125 \
        --out "$R/04_ipo_md"
  POLICIES+=("$R/04_ipo" "$R/04_ipo_online" "$R/04_ipo_md")
fi

stage 06_eval.py "${POLICIES[@]}" --run "$RUN" --seed "$SEED" --device "$DEVICE" --overwrite "${PREC[@]}" "${EVAL[@]}"
echo; echo "run.sh: done in $(( $(date +%s) - START ))s; report: $R/06_eval/report.md"
