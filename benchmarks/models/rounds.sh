# Sourced by the *_vs_torch.sh scripts: alternating rounds of two programs.
#
#   run_rounds OURS_CMD THEIRS_CMD   runs each ROUNDS times, alternating, into
#                                    $ours and $theirs (all their lines)
#   best_medians TEXT                per case, the line with the lowest median
#                                    over the rounds (cases come in the order of
#                                    $cases every round)
# A shared machine's slow spells then hit neither side's reported time.

run_rounds() {
  ours="" theirs=""
  for ((r = 0; r < ${ROUNDS:-3}; r++)); do
    ours+="$(eval "$1")"$'\n'
    theirs+="$(eval "$2")"$'\n'
  done
}

best_medians() {
  awk -v n="$(tr ',' '\n' <<<"$cases" | wc -l)" '
    /median/ { m = $0; sub(/.*median /, "", m); sub(/ ms.*/, "", m); i = k++ % n
      if (!(i in best) || m + 0 < best[i]) { best[i] = m + 0; line[i] = $0 } }
    END { for (i = 0; i < n; i++) print line[i] }' <<<"$1"
}
