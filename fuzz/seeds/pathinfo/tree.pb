
\
Z
4smvjin7mrnws44jhpg986z2lqpmzicc6-tvix-fuzz-seed-tree v9âSãP=ˆÇÃ‹’ÌçôvMÑíˆl“¨y…2…j%à &òız…¡ş+,Òs·rp,¥o^çõâ&QĞ€İá