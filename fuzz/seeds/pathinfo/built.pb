
][
54963629kv17w4b0y8z7zjp9xw9d7z8dc-tvix-fuzz-seed-built ì0ŒÈ5‚Æcé"lD’;÷Áÿ¸$yûÜ"P<›8æk¼ñğ …ZQGfwpU´}×° 	Æ$€œÁ‹Û$>Ää™}¦ª12Ñ™n.Ì+O
fuzz-seed-1@…µâ ÌaäüuÎÎÎ•‹ÎEn‡û3ÎñA1Ù£›µ·şEû4¬_­}jĞş®R¾CßY˜Òí‡"1gns0wm8mf1vncisiba2j017h3bqvqsz6-tvix-fuzz-seed-a*,
tvix-fuzz-seed-built»L½şÆ7ë˜ÃÁj&Ò3Îå/›