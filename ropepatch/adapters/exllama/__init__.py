"""ExLlama adapters: :mod:`.v2` (sin/cos tables) and :mod:`.v3` (one ``inv_freq`` per ``RoPE`` module), the
layouts both share (:mod:`.tables`) and the doctor's probes (:mod:`.probes`)."""
