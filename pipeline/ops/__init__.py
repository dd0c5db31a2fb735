"""Operations: the HTTP side (OTA, activation, health, metrics), auth tokens."""
