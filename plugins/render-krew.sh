#!/usr/bin/env bash
# Renders the krew manifest for a release:
#   plugins/render-krew.sh VERSION OWNER/REPO SHA256_X86_64 SHA256_AARCH64 > distroless.yaml
set -euo pipefail
if [ "$#" -ne 4 ]; then
  echo "usage: $0 VERSION OWNER/REPO SHA256_X86_64 SHA256_AARCH64" >&2
  exit 2
fi
version=$1 repository=$2 x86=$3 arm=$4
for sum in "$x86" "$arm"; do
  if ! [[ $sum =~ ^[0-9a-f]{64}$ ]]; then
    echo "not a sha256: $sum" >&2
    exit 2
  fi
done
template="$(dirname "$0")/distroless.yaml"
sed -e "s|@VERSION@|$version|g" -e "s|@REPOSITORY@|$repository|g" \
    -e "s|@SHA256_X86_64@|$x86|g" -e "s|@SHA256_AARCH64@|$arm|g" "$template"
