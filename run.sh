#!/usr/bin/env bash
# The MPO pipeline, stage by stage, into runs/<run>/ (Gou & Nguyen, 2024, arXiv 2403.19443):
#   01 SFT -> 02 reward model -> 03 easy/hard split -> 04 DPO on easy -> 05 PPO on hard (ref = DPO) -> 06 eval
#
#   bash run.sh                      # MPO on the built-in task; CPU budgets on a CPU, full budgets on a GPU
#   bash run.sh --compare            # + vanilla DPO, DPO on hard, vanilla PPO, PPO with the SFT reference;
#                                    #   all evaluated in one 06 call
#   bash run.sh --compare --ipo      # + offline IPO, online IPO and IPO-MD (Calandriello et al., 2024), and
#                                    #   Nash-MD-PG (Munos et al., 2023), the method they compare with
#   bash run.sh --run seed1 --seed 1 # another run directory and seed
#   bash run.sh --sweep-threshold 0.5,1,1.5,2,2.5   # + MPO (03 -> 04 -> 05) again at each reward-gap
#                                    #   threshold, on the same SFT and RM; 06 tabulates and plots the sweep
#   bash run.sh --sweep-easy-fraction 0.2,0.4,0.6   # the same with quantile thresholds (03 --easy-fraction)
#   bash run.sh ... --resume         # skip every stage whose output directory is finished, redo one whose
#                                    #   input was remade since; resume with the flags of the interrupted run
#                                    #   (another seed, budget, model or dataset is refused); 06 always runs;
#                                    #   the precision is the run's 01's unless --precision says otherwise
#   bash run.sh ... --overwrite      # redo an existing run in place (without it, or --resume, an existing
#                                    #   run is refused); before 06, the stage outputs of the earlier run that
#                                    #   this one did not redo (an earlier --compare's, say) are removed
#   bash run.sh --model DIR --dataset FILE.jsonl.gz   # other model or data (named once, in stage 01; paths
#                                    #   from where you call run.sh; the run goes to runs/ beside run.sh)
#   bash run.sh --budget cpu|gpu|tiny --device cpu|cuda  # the step budget (default: gpu where CUDA is, else
#                                    #   cpu; tiny: the end-to-end test) and the device (default: auto)
#   bash run.sh --precision fp32     # every stage's precision (default auto: bf16 autocast on CUDA and on
#                                    #   CPUs with native bf16, else fp32)
#
# Extra flags after `--` go to 01_sft.py (e.g. `-- --max-train-pairs 500`); not the ones run.sh sets itself.
set -euo pipefail
CALLER=$PWD   # --model and --dataset paths are the caller's; the runs go under runs/ beside this script
cd "$(dirname "$0")"

RUN=default; SEED=0; COMPARE=0; IPO=0; DEVICE=auto; MODEL=""; DATASET=builtin; BUDGET=auto; EXTRA=(); PRECISION=auto
SWEEP=""; SWEEP_OPT=""; SWEEP_FLAG=""; RESUME=0; OVERWRITE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --run|--seed|--device|--model|--dataset|--budget|--precision|--sweep-threshold|--sweep-easy-fraction)
      [ $# -ge 2 ] && [ -n "$2" ] || { echo "run.sh: $1 needs a value, not empty (see bash run.sh --help)" >&2; exit 2; } ;;&
    --run) RUN="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --compare) COMPARE=1; shift ;;
    --ipo) IPO=1; shift ;;
    --device) DEVICE="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    --dataset) DATASET="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;   # cpu | gpu | tiny (the tests' toy budget)
    --precision) PRECISION="$2"; shift 2 ;;
    --sweep-threshold|--sweep-easy-fraction)
      [ -n "$SWEEP" ] && { echo "run.sh: pass one of --sweep-threshold and --sweep-easy-fraction" >&2; exit 2; }
      SWEEP_OPT="$1"; SWEEP_FLAG="--${1#--sweep-}"; SWEEP="$2"; shift 2 ;;
    --resume) RESUME=1; shift ;;
    --overwrite) OVERWRITE=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;   # the comment block above
    *) echo "run.sh: unknown option $1 (see bash run.sh --help)" >&2; exit 2 ;;
  esac
done

case "$RUN" in   # a folder under runs/, as the stages take it: runs/<run>
  ""|.*|-*|*/*) echo "run.sh: --run '$RUN': expected a plain name (no '/', not starting with '.' or '-'); the run goes to runs/<name>" >&2; exit 2;;
esac
[ "$RESUME" = 1 ] && [ "$OVERWRITE" = 1 ] && { echo "run.sh: pass one of --resume (keep the finished stages) and --overwrite (redo them)" >&2; exit 2; }
for T in ${SWEEP//,/ }; do  # numbers only: each becomes 03's flag and part of a directory name
  [[ "$T" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "run.sh: $SWEEP_OPT: '$T' is not a plain decimal of 0 or more (expected a comma-separated list such as 0.5,1,2)" >&2; exit 2; }
  [ "$SWEEP_OPT" = --sweep-easy-fraction ] && ! awk -v f="$T" 'BEGIN { exit !(f > 0 && f < 1) }' && {
    echo "run.sh: $SWEEP_OPT: $T is not in (0, 1), the share of pairs made easy" >&2; exit 2; }
  awk -v f="$T" 'BEGIN { exit !(f <= 1e9) }' || { echo "run.sh: $SWEEP_OPT: $T is past 1e9, which 03 refuses" >&2; exit 2; }
done
DUP=$(printf '%s\n' ${SWEEP//,/ } | awk '{ if (seen[$1 + 0]++) { print $1; exit } }')   # 0.05 and 0.050 alike
[ -n "$DUP" ] && { echo "run.sh: $SWEEP_OPT: $DUP is named twice; each point once" >&2; exit 2; }
for A in "${EXTRA[@]}"; do  # the run's own settings: given after `--`, 01 alone would take them
  case "$A" in --run|--run=*|--out|--out=*|--seed|--seed=*|--device|--device=*|--overwrite|--dataset|--dataset=*|--model|--model=*|--precision|--precision=*)
    echo "run.sh: ${A%%=*} after -- would reach 01_sft.py alone; pass it to run.sh before --" >&2; exit 2;;
    -h|--help) echo "run.sh: $A after -- would print 01_sft.py's help and go on to 02 without it; run python 01_sft.py --help" >&2; exit 2;;
  esac
done
case "$PRECISION" in auto|fp32|bf16|fp16) ;; *) echo "run.sh: --precision must be auto, fp32, bf16 or fp16" >&2; exit 2;; esac
for V in MODEL DATASET; do   # a path relative to where run.sh was called from, as any command's would be
  P=${!V}; [ -n "$P" ] && [ "${P#/}" = "$P" ] && [ -e "$CALLER/$P" ] && printf -v "$V" '%s' "$CALLER/$P"
done
[ -n "$SWEEP_FLAG" ] && [ -z "${SWEEP//,/}" ] && { echo "run.sh: $SWEEP_OPT needs a list such as 0.5,1,2" >&2; exit 2; }

PY=${PYTHON:-python}
if [ "$BUDGET" = auto ]; then
  if [ "$DEVICE" = cpu ]; then BUDGET=cpu
  elif $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then BUDGET=gpu
  else BUDGET=cpu; fi
fi
R="runs/$RUN"
if [ "$RESUME" = 0 ] && [ "$OVERWRITE" = 0 ] && [ -n "$(ls -A "$R" 2>/dev/null)" ]; then
  echo "run.sh: $R exists; pass --resume to finish it, --overwrite to redo it, or --run NAME for a new run" >&2; exit 2
fi
[ "$RESUME" = 1 ] && [ -z "$(ls -A "$R" 2>/dev/null)" ] && echo "run.sh: note: $R has no stages yet; --resume starts it from 01 (is --run the name you meant?)"
MIXED="$R/.overwrite-unfinished"   # from 01 of an --overwrite to its end, the run mixes old and new stages
if [ "$RESUME" = 1 ] && [ -e "$MIXED" ]; then
  echo "run.sh: $R was being redone with --overwrite, which did not finish: its stages are partly the earlier run's; pass --overwrite to redo it" >&2; exit 2
fi
# --precision auto (the default): bf16 autocast on CUDA, and on a CPU only where the CPU computes bf16 natively
# (a matrix-product probe); elsewhere fp32 (emulated bf16 is ~60x slower). Resolved once, here, so every stage
# of the run computes in one precision (a probe per stage could read otherwise on a loaded machine); a resumed
# run keeps the precision its 01 ran in. Where neither answers, each stage picks for itself (01 names what
# stopped the probe, such as --device cuda without CUDA).
PICKED=""
if [ "$PRECISION" = auto ]; then
  if [ "$RESUME" = 1 ] && [ -f "$R/01_sft/stage.json" ]; then
    P=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1])).get('precision'))" "$R/01_sft/stage.json" 2>/dev/null) || P=""
    PICKED="precision: $P, the one this run's 01 ran in (--resume)"
  else   # the probe prints its pick with the measured reason, then the pick's name
    PICKED=$("$PY" -c "import importlib.util as u; s = u.spec_from_file_location('sft', '01_sft.py'); m = u.module_from_spec(s)
s.loader.exec_module(m); print(m.precision_name(m.pick_precision('auto', m.pick_device('$DEVICE'))[0]))" 2>/dev/null) || PICKED=""
    P=${PICKED##*$'\n'}; PICKED=${PICKED%$'\n'*}; PICKED=${PICKED##*$'\n'}
  fi
  case "$P" in fp32|bf16|fp16) PRECISION=$P ;; *) PICKED="" ;; esac
fi
# every stage replaces its own output: the run as a whole was checked above (--resume remakes what is not
# finished, and 06)
COMMON=(--run "$RUN" --seed "$SEED" --device "$DEVICE" --precision "$PRECISION" --overwrite)

# Budgets. CPU: 2 cores, fewer pairs and steps, sized so the run ends within 30 minutes in fp32 too.
# GPU: more data and bigger batches. tiny: the end-to-end test.
# The rule that keeps --compare fair: every offline DPO / IPO variant takes the same optimiser steps of the
# same batch size (the same number of pairs seen, whatever the size of its set), the online ones the same
# steps as each other, and every PPO variant the same iterations of the same rollout batch. MPO is DPO's
# steps and then PPO's. 06's report.md states each policy's budget beside its row.
case "$BUDGET" in
  cpu)
    BUILTIN=(--builtin-train-pairs 500 --builtin-test-prompts 140); SFT=(--max-steps 30)   # 20 test requests a family
    RM=(--max-steps 30); DPO=(--max-steps 25); PPO=(--steps 8)
    ONLINE=(--max-steps 10); EVAL=()
    # measured on 2 cores of an AMD EPYC with avx512_bf16 and of an Intel Xeon with AMX (README, Quickstart); fp32 with
    # oneDNN limited to AVX2
    case "$PRECISION" in
      bf16) TIMES="01 ~1.5-2 min | 02 ~1.5-2 min | 03 ~0.5 min | 04 ~2 min | 05 ~3-4 min | 06 ~2.5-3.5 min: ~10-17 min (2 cores, native bf16)";;
      *)    TIMES="01 ~3 min | 02 ~3 min | 03 ~1.5 min | 04 ~4 min | 05 ~5 min | 06 ~5 min: ~21 min (2 cores, fp32; slower CPUs longer)";;
    esac;;
  gpu)
    # batches of 32: a 135M model leaves a GPU idle at 8 sequences a step
    BUILTIN=(--builtin-train-pairs 4000 --builtin-test-prompts 400); SFT=(--batch-size 32 --lr 5e-5)
    RM=(--batch-size 32 --lr 5e-5); DPO=(--batch-size 32 --lr 1e-5 --max-steps 60)
    PPO=(--steps 40 --rollout-batch 32 --minibatch-size 8); ONLINE=(--max-steps 40 --batch-size 16); EVAL=()
    # measured on one H200 with SmolLM2-135M (README, "On one GPU"); --compare adds two 04s and two 05s
    TIMES="01 ~1.5 min | 02 ~0.5 min | 03 ~0.5 min | 04 ~0.5-1 min | 05 ~3.5 min | 06 ~1 min: ~7 min (one H200)";;
  tiny)
    BUILTIN=(--builtin-train-pairs 120 --builtin-test-prompts 12); SFT=(--max-steps 4 --lr 1e-3)
    RM=(--max-steps 4 --lr 1e-3); DPO=(--max-steps 3 --lr 1e-4); PPO=(--steps 2 --max-new-tokens 8 --lr 1e-4)
    ONLINE=(--max-steps 2 --max-new-tokens 8 --eval-every 1); EVAL=(--max-new-tokens 8 --bootstrap 100)
    # learning rates that move the tests' random tiny model in a few steps: a smoke test of the plumbing, which
    # overshoots a pretrained model (its results say nothing about the method)
    TIMES="~0.5-1 min a stage with SmolLM2-135M, ~3 min in all (2 cores); seconds with a tiny model; a smoke test: its learning rates are sized for a random tiny model, so a real model's report means nothing";;
  *) echo "run.sh: --budget must be cpu, gpu or tiny" >&2; exit 2;;
esac
[ -n "$MODEL" ] && SFT+=(--model "$MODEL")
[ "$DATASET" = builtin ] && SFT+=("${BUILTIN[@]}")   # the built-in task's sizes; 01 refuses them for a file
SPLIT=()
[ "$BUDGET" = tiny ] && SPLIT=(--easy-fraction 0.5)

TAG=${SWEEP_FLAG#--}; TAG=${TAG:0:1}     # t (threshold) or e (easy fraction): 03_split_t1.5, 05_ppo_e0.4
if [ "$RESUME" = 1 ]; then   # before any stage: a run is continued with the flags that made it
  NAMES=(01_sft 04_dpo 05_ppo)   # the policies this command evaluates (06 replaces its evaluation)
  [ "$COMPARE" = 1 ] && NAMES+=(04_dpo_all 04_dpo_hard 05_ppo_vanilla 05_ppo_sftref)
  [ "$IPO" = 1 ] && NAMES+=(04_ipo 04_ipo_online 04_ipo_md 04_nash_md_pg)
  for T in ${SWEEP//,/ }; do NAMES+=("04_dpo_$TAG$T" "05_ppo_$TAG$T"); done
  WHY=$("$PY" - "$R" "${NAMES[*]}" --seed "$SEED" --dataset "$DATASET" "${SFT[@]}" "${EXTRA[@]}" 2>&1 <<'EOF'
import json, os, sys
from importlib import util
run, names, argv = sys.argv[1], set(sys.argv[2].split()), sys.argv[3:]
def record(path):   # None where there is none, or one that does not read (its stage is not finished)
    try:
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
        return r if isinstance(r, dict) else None
    except (OSError, ValueError):
        return None
sft = record(f"{run}/01_sft/stage.json")
if sft and isinstance(sft.get("args"), dict):   # 01's flags as 01 reads them (defaults, --flag=value), and its record's
    spec = util.spec_from_file_location("sft", "01_sft.py")
    m = util.module_from_spec(spec)
    spec.loader.exec_module(m)
    try:
        mine = vars(m.parse_args(argv))
    except m.UserError as e:
        sys.exit(f"01_sft.py refuses the flags this command gives it: {e}")
    differ = []
    for k, v in mine.items():
        old = sft["args"].get(k)
        if k in ("run", "out", "overwrite", "device", "precision") or v is None or old is None:
            continue   # (None: a length 01 fills in itself)
        if k in ("model", "dataset", "test_dataset") and os.path.exists(str(v)) and os.path.exists(str(old)):
            v, old = os.path.realpath(v), os.path.realpath(old)
        if v != old:
            differ.append(f"--{k.replace('_', '-')} {v} (its 01_sft ran with {old})")
    if differ:
        sys.exit(f"{run} was made with other settings than this command's: {'; '.join(differ)}; resume with the "
                 f"flags of the run you continue (its --seed, --budget, --model, --dataset and flags after --), "
                 f"or pass --run NAME for a new run")
evaluated = record(f"{run}/06_eval/results.json") or {}
more = sorted(set(evaluated.get("results") or {}) - names) if isinstance(evaluated.get("results"), dict) else []
if more:
    sys.exit(f"{run}/06_eval also evaluated {', '.join(more)}, which this command would not (made with --compare, "
             f"--ipo or a sweep?); resume with the flags that made them, or move {run}/06_eval away first")
EOF
) || { echo "run.sh: --resume: ${WHY##*$'\n'}" >&2; exit 2; }
fi

echo "run.sh: run $R, seed $SEED, budget $BUDGET, device $DEVICE, precision $PRECISION, dataset $DATASET"
[ -n "$PICKED" ] && echo "run.sh: $PICKED; every stage computes in it"
echo "run.sh: expected wall time per stage ($BUDGET): $TIMES"
START=$(date +%s)
MADE=()   # the output directories of this run's stages
stopped() {   # a stage failed or was interrupted: say how to go on
  local code=$? how="--resume to go on from the stages that finished"
  [ -e "$MIXED" ] && how="--overwrite to redo it (this --overwrite did not finish)"
  [ "$code" = 2 ] && how="$how, once what the stage above names is mended"   # a refused input or flag
  [ "$code" = 2 ] && [ "${#MADE[@]}" -le 1 ] && [ ! -e "$MIXED" ] && [ "$RESUME" = 0 ] &&
    how="the same command once what the stage above names is mended (no stage had finished)"
  local why="the stage above says why"   # run.sh itself interrupted: bash waits for the stage, which may finish
  [ -n "$SIGNAL" ] && why="run.sh was interrupted ($SIGNAL); a stage stopped with it says so above, the ones that finished are kept"
  [ "$code" = 0 ] || echo "run.sh: stopped (exit $code; $why): rerun with $how" >&2
}
SIGNAL=""
trap stopped EXIT
trap 'SIGNAL=Ctrl-C; exit 130' INT; trap 'SIGNAL="a kill"; exit 143' TERM   # Ctrl-C and a kill end through `stopped` too
same_split() {
  # 0 where split $1 is this sweep point's: made by 03 with this setting ($2 $3) from the run's own RM and
  # data, or (a split made for the point, $2) holding the same pairs in each set. Not the files' bytes: under
  # bf16 on a loaded CPU the reward gaps of two processes differ in the last digits, which reorders the files.
  "$PY" - "$@" <<'EOF'
import json, sys
from collections import Counter
from importlib import util
def stats(d, name="stats.json"):
    with open(f"{d}/{name}") as f:
        return json.load(f)
def pairs(d, name):
    with open(f"{d}/{name}.jsonl") as f:
        return Counter((json.dumps(r["prompt"]), r["chosen"], r["rejected"]) for r in map(json.loads, f))
try:
    own = stats(sys.argv[1])
    if len(sys.argv) == 4:
        a, value = own["args"], float(sys.argv[3])
        rule = (a["easy_fraction"] == value if sys.argv[2] == "--easy-fraction"
                else a["easy_fraction"] is None and own["threshold"] == value)
        same = rule and a["reward"] is None and a["data"] is None and a["wrong_way"] == "relabel"
        if same:   # and the lengths this point's 03 inherits from 03's SFT, found as 03 finds it (where_now)
            spec = util.spec_from_file_location("split", "03_split.py")
            split = util.module_from_spec(spec)
            spec.loader.exec_module(split)
            sft = stats(split.where_now(own["sft"], sys.argv[1]), "stage.json")["args"]
            same = all(a[k] == sft[k] for k in ("max_prompt_len", "max_response_len"))
    else:
        same = all(pairs(sys.argv[1], n) == pairs(sys.argv[2], n) for n in ("easy", "hard"))
except (OSError, ValueError, KeyError, TypeError):
    same = False   # no readable 03_split: the point is trained as its own
sys.exit(0 if same else 1)
EOF
}
finished() {   # $1 holds a stage's record that reads as JSON (one cut short is no finished stage), made from
  # its inputs as they are now: an input whose record differs from the crc32 its own marks was remade since
  # (a 03_split rerun by hand, say), and the stage is redone on it. run.sh's stages read their own run's
  # folders: in a moved or copied run, the folder of the marked one's name beside it
  "$PY" - "$1" <<'EOF'
import json, sys, zlib
from pathlib import Path
def mark(record):   # the stages' record_mark: the record without times, speeds, versions and the probe's reading
    volatile = lambda k: k in ("wall_time_s", "versions", "precision_reason") or k.startswith(("perf/", "time/"))
    kept = lambda x: {k: kept(v) for k, v in x.items() if not volatile(k)} if isinstance(x, dict) else x
    return zlib.crc32(json.dumps(kept(json.loads(record.read_text(encoding="utf-8"))), sort_keys=True).encode())
for name in ("stage.json", "stats.json"):
    try:
        record = json.load(open(Path(sys.argv[1]) / name, encoding="utf-8"))
        break
    except (OSError, ValueError):
        continue
else:
    sys.exit(1)
folder = Path(sys.argv[1])   # a file its record lists, or the weights beside a config.json, deleted since
files = record.get("files") if isinstance(record, dict) and isinstance(record.get("files"), dict) else {}
lost = [n for n in files if not (folder / n).is_file()] + ["model.safetensors"] * (
    (folder / "config.json").is_file() and not any(folder.glob("*.safetensors")))
if lost:
    print(f"run.sh: {folder} has lost {lost[0]} since it was made: redone (--resume)")
    sys.exit(1)
marks = record.get("marks") if isinstance(record, dict) and isinstance(record.get("marks"), dict) else {}
for path, crc in marks.items():   # (03's record is its stats.json)
    here = Path(sys.argv[1]).parent / Path(path).name
    folder = here if here.is_dir() else Path(path)
    f = next((folder / r for r in ("stage.json", "stats.json") if (folder / r).is_file()), None)
    try:
        changed = f and mark(f) != crc
    except (OSError, ValueError):   # an input cut short: its own stage is redone first
        changed = True
    if changed:
        print(f"run.sh: {sys.argv[1]} was made from {folder} as it was then, remade since: redone (--resume)")
        sys.exit(1)
EOF
}
stage() {
  local out="$R/${1%.py}" prev="" a t
  for a in "$@"; do [ "$prev" = --out ] && out="$a"; prev="$a"; done
  MADE+=("$out")
  if [ "$RESUME" = 1 ] && [ "$1" != 06_eval.py ] && finished "$out"; then
    echo; echo "=== $1: $out is finished; skipped (--resume) ==="; return
  fi
  echo; echo "=== $* ==="; t=$(date +%s); "$PY" "$@" || return; echo "--- $(( $(date +%s) - t ))s"
}

stage 01_sft.py "${COMMON[@]}" --dataset "$DATASET" "${SFT[@]}" "${EXTRA[@]}"
[ "$OVERWRITE" = 1 ] && touch "$MIXED"
stage 02_reward.py "${COMMON[@]}" "${RM[@]}"
stage 03_split.py --run "$RUN" --device "$DEVICE" --precision "$PRECISION" --overwrite "${SPLIT[@]}"   # deterministic: no seed
stage 04_dpo.py "${COMMON[@]}" "${DPO[@]}"
stage 05_ppo.py "${COMMON[@]}" "${PPO[@]}"
POLICIES=("$R/01_sft" "$R/04_dpo" "$R/05_ppo")

if [ "$COMPARE" = 1 ]; then
  # baselines and ablations, on the same SFT model and reward model
  stage 04_dpo.py "${COMMON[@]}" "${DPO[@]}" --split all --out "$R/04_dpo_all"
  stage 04_dpo.py "${COMMON[@]}" "${DPO[@]}" --split hard --out "$R/04_dpo_hard"
  stage 05_ppo.py "${COMMON[@]}" "${PPO[@]}" --policy "$R/01_sft" --ref "$R/01_sft" \
        --prompts all --out "$R/05_ppo_vanilla"
  stage 05_ppo.py "${COMMON[@]}" "${PPO[@]}" --policy "$R/04_dpo" --ref "$R/01_sft" \
        --out "$R/05_ppo_sftref"
  POLICIES+=("$R/04_dpo_all" "$R/04_dpo_hard" "$R/05_ppo_vanilla" "$R/05_ppo_sftref")
fi
if [ "$IPO" = 1 ]; then
  # the IPO family of Calandriello et al. (2024) on the easy set: offline, online, and IPO-MD; and their
  # baseline Nash-MD-PG, with the same steps, prompts and samples as the online two
  stage 04_dpo.py "${COMMON[@]}" "${DPO[@]}" --loss ipo --out "$R/04_ipo"
  stage 04_dpo.py "${COMMON[@]}" "${ONLINE[@]}" --online --loss ipo --out "$R/04_ipo_online"
  stage 04_dpo.py "${COMMON[@]}" "${ONLINE[@]}" --online --loss ipo --mixture-beta 0.125 \
        --out "$R/04_ipo_md"
  stage 04_dpo.py "${COMMON[@]}" "${ONLINE[@]}" --online --loss nash-md-pg --mixture-beta 0.125 \
        --out "$R/04_nash_md_pg"
  POLICIES+=("$R/04_ipo" "$R/04_ipo_online" "$R/04_ipo_md" "$R/04_nash_md_pg")
fi
if [ -n "$SWEEP" ]; then
  # MPO again at every threshold, on the same SFT model and reward model (the paper fixes one per dataset
  # and does not say how to choose it). A point of 03_split's own setting, or whose split holds the same
  # pairs, is MPO's own run.
  for T in ${SWEEP//,/ }; do
    S="$R/03_split_$TAG$T"
    if same_split "$R/03_split" "$SWEEP_FLAG" "$T"; then
      echo "run.sh: $SWEEP_FLAG $T splits as 03_split did (its own setting): 04_dpo and 05_ppo are MPO at this point"; continue
    fi
    stage 03_split.py --run "$RUN" --device "$DEVICE" --precision "$PRECISION" --overwrite "$SWEEP_FLAG" "$T" --out "$S" || {
      code=$?; [ "$code" = 2 ] || exit "$code"   # 2: a one-line refusal (an empty set); skip the point, not the run
      echo "run.sh: no MPO at $SWEEP_FLAG $T: 03 refused it (above)"; continue; }
    if same_split "$R/03_split" "$S"; then
      echo "run.sh: $SWEEP_FLAG $T splits as 03_split did (the same pairs in each set): 04_dpo and 05_ppo are MPO at this point"; continue
    fi
    stage 04_dpo.py "${COMMON[@]}" "${DPO[@]}" --split-dir "$S" --out "$R/04_dpo_$TAG$T"
    stage 05_ppo.py "${COMMON[@]}" "${PPO[@]}" --split-dir "$S" --policy "$R/04_dpo_$TAG$T" \
          --ref "$R/04_dpo_$TAG$T" --out "$R/05_ppo_$TAG$T"
    POLICIES+=("$R/04_dpo_$TAG$T" "$R/05_ppo_$TAG$T")
  done
fi

if [ "$OVERWRITE" = 1 ]; then
  # stages of the earlier run that this one did not redo were trained from the stages it replaced
  for d in "$R"/*/; do
    d=${d%/}; keep=0
    for m in "${MADE[@]}" "$R/06_eval"; do [ "$m" = "$d" ] && keep=1; done
    if [ "$keep" = 0 ] && { [ -f "$d/stage.json" ] || [ -f "$d/stats.json" ] || [ -f "$d/results.json" ]; }; then
      rm -rf "$d"; echo "run.sh: removed $d, an earlier run's stage that this run did not redo (--overwrite)"
    fi
  done
  rm -f "$MIXED"
fi
stage 06_eval.py "${POLICIES[@]}" --run "$RUN" --seed "$SEED" --device "$DEVICE" --precision "$PRECISION" --overwrite "${EVAL[@]}"
echo; echo "run.sh: done in $(( $(date +%s) - START ))s; report: $R/06_eval/report.md"
