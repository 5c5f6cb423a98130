# Shared by the launch scripts (sourced, not run).

# Prints its arguments as one shell command line, quoting only the words that need it, so that a
# printed command reads like a typed one and can be pasted back as it is.
quote() {
  local words=() word
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then words+=("$word"); else words+=("${word@Q}"); fi
  done
  echo "${words[*]}"
}
