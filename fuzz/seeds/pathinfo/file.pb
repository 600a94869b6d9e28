
\Z
478y5kn4h9h9gzab9fvyl919mfs710kxr-tvix-fuzz-seed-file ².N{qö¼n0a}£Pæ’¦…¿ág„Ñ«Áq;‰³R¨š àÒÆë²n—ïéf²¦ NØwiaÓÑ§»¬øŠlŒO
fuzz-seed-1@4y"zËÜøú„…–‡~"m,câw¢oöNÐV£…³âcÍ¶çÕ¼»«Ý£•TèÆïYöÌÝ‘T2†qâ¾ƒ2" àÒÆë²n—ïéf²¦ NØwiaÓÑ§»¬øŠlŒ