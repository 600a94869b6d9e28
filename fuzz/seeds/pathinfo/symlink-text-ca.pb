
vt
4vrk8zj68jdpdwsyfd8i1ds98x53215v3-tvix-fuzz-seed-text</nix/store/gns0wm8mf1vncisiba2j017h3bqvqsz6-tvix-fuzz-seed-aJx 
CyÂføµ@’ ù5Ï?¬Ô‹¼ÍåvGHÊ@Qqéi2$ ,òMº_°£&è;*Å¹âž\§B^s3b“‹˜$